"""The gateway's exceptions, in one tree.

GatewayError
├── ConfigError            settings file or value is wrong (message names the key and the fix)
│   └── SecretError        no usable secret key
├── StateError             the database or data folder cannot be used
├── NotDicom               input that is not DICOM at all (skipped and reported, not quarantined)
└── InstanceError          one instance cannot be passed on; it goes to quarantine
    ├── MalformedInstance      unreadable, truncated, or missing a required attribute
    ├── UnknownPatient         patient not in the configured lookup table
    ├── BurnedInAnnotation     pixel data may show identifying text
    ├── LeakDetected           an original identifying value survived de-identification
    ├── DeliveryRefused        a destination refused a de-identified instance for good (dead letter)
    ├── ConflictingInstance    another instance's output is already where this one would go
    ├── ConversionFailed       cannot be converted to a transfer syntax a destination takes
    └── PixelCleaningFailed    burned-in text could not be removed from the pixels (or not verified)

Each InstanceError carries a short machine-readable ``reason`` for the quarantine record
and a DIMSE ``status`` to answer when the gateway is configured to refuse the instance.
Messages never contain values taken from a dataset: only element names, tags and classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration key is missing or has a wrong value."""


class SecretError(ConfigError):
    """The secret key for keyed pseudonyms is missing or unusable."""


class StateError(GatewayError):
    """The pseudonym database or the data folder cannot be used."""


class NotDicom(GatewayError):
    """Input that is not a DICOM file or data set (empty, text, an image of another format)."""


class NotAnInstance(NotDicom):
    """DICOM, but not a composite instance (e.g. a DICOMDIR)."""


class InstanceError(GatewayError):
    """An instance that cannot be de-identified and passed on."""

    reason = "error"
    # 0xC000 range: "cannot understand"; a refusing gateway answers with it.
    status = 0xC000


class MalformedInstance(InstanceError):
    reason = "malformed"
    status = 0xC001


class UnknownPatient(InstanceError):
    reason = "unknown-patient"
    status = 0xC002


class BurnedInAnnotation(InstanceError):
    reason = "burned-in-annotation"
    status = 0xC003


class LeakDetected(InstanceError):
    reason = "leak-detected"
    status = 0xC004


class DeliveryRefused(InstanceError):
    """A destination refused the instance permanently, or kept failing past the retry age."""

    reason = "dead-letter"


class ConflictingInstance(InstanceError):
    """Its de-identified output would replace a different one already written at the same place
    (two inputs with one SOP Instance UID but different content): the first one is kept."""

    reason = "conflicting-instance"
    status = 0xC005


class ConversionFailed(InstanceError):
    """The forwarder could not convert the instance to a transfer syntax the destination takes
    (no decoder, or decoding or encoding failed): a dead letter for that destination."""

    reason = "conversion-failed"


class PixelCleaningFailed(InstanceError):
    """Pixels at risk of showing text could not be cleaned: undecodable, an unsupported pixel
    layout, text still readable after cleaning, or OCR unavailable (fail closed)."""

    reason = "pixel-cleaning-failed"
    status = 0xC006


@contextmanager
def unexpected_errors_as_malformed() -> Iterator[None]:
    """Any unexpected exception in the block becomes MalformedInstance (naming only its class):
    one instance that trips the code must go to quarantine, not stop the run. NotDicom and
    InstanceError pass as they are; so does MemoryError (the machine's, not the instance's)."""
    try:
        yield
    except (NotDicom, InstanceError, MemoryError):
        raise
    except Exception as exc:
        raise MalformedInstance(f"cannot read or de-identify the instance ({type(exc).__name__})") \
            from exc
