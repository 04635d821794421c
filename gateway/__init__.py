"""dicom-gateway: a store-and-forward anonymizing DICOM gateway."""

__version__ = "0.1.0"
