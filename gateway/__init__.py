"""dicom-gateway: a store-and-forward anonymizing DICOM gateway."""

__version__ = "0.1.0"

# How the gateway names itself in associations and in the files it writes: its implementation
# class UID (a fixed 2.25 UUID-derived value) and version name (at most 16 characters).
IMPLEMENTATION_CLASS_UID = "2.25.168145871405626187532911384815312474114"
IMPLEMENTATION_VERSION_NAME = f"DICOM_GW_{__version__}"[:16]
