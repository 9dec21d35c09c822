"""Exceptions raised by cxr_embed.

Every exception derives from :class:`CxrEmbedError` *and* from the built-in
exception a caller would naturally catch (``ValueError``, ``FileNotFoundError``,
``LookupError`` ...), following pydicom's ``UnknownVRError(NotImplementedError)``.
Messages say what was expected, what came, and the fix.
"""
from __future__ import annotations

__all__ = [
    "CxrEmbedError",
    "ImageReadError",
    "ImageNotFoundError",
    "NoPixelDataError",
    "MultiFrameError",
    "ManifestError",
    "MissingFilesError",
    "BoxFormatError",
    "BackboneError",
    "WeightsError",
    "StoreError",
    "FingerprintMismatchError",
    "StoreLockedError",
    "MissingIdsError",
    "LeakageError",
    "BundleIntegrityError",
    "MissingDependencyError",
]


class CxrEmbedError(Exception):
    """Base class of every error raised on purpose by cxr_embed."""


# --- reading images -------------------------------------------------------
class ImageReadError(CxrEmbedError, ValueError):
    """A file could not be decoded into a radiograph.

    Parameters
    ----------
    path : str
        The offending file; always part of the message.
    reason : str
        What went wrong and how to fix it.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The image path does not exist (or is a directory)."""


class NoPixelDataError(ImageReadError):
    """A DICOM file without pixel data (structured report, presentation state ...)."""


class MultiFrameError(ImageReadError):
    """A multi-frame DICOM was read without choosing ``frame=``."""


# --- manifests -------------------------------------------------------------
class ManifestError(CxrEmbedError, ValueError):
    """A dataset table is malformed (unknown format, duplicate ids, bad labels)."""


class MissingFilesError(ManifestError, FileNotFoundError):
    """Images named by a manifest do not exist on disk."""


# --- backbones -------------------------------------------------------------
class BoxFormatError(ManifestError):
    """A table of bounding boxes (radiologists' regions) is malformed or cannot be scaled."""


class BackboneError(CxrEmbedError, ValueError):
    """Unknown backbone name, layer or pooling."""


class WeightsError(CxrEmbedError, RuntimeError):
    """Weights could not be found, converted or verified."""


# --- the embedding store ---------------------------------------------------
class StoreError(CxrEmbedError, RuntimeError):
    """The HDF5 embedding store is unreadable or in an unexpected format."""


class FingerprintMismatchError(StoreError, ValueError):
    """Embeddings of one backbone configuration would be mixed with another's."""


class StoreLockedError(StoreError, BlockingIOError):
    """Another process is writing to the store."""


class MissingIdsError(StoreError, LookupError):
    """Ids asked for are not in the store."""


# --- statistics and models -------------------------------------------------
class LeakageError(CxrEmbedError, ValueError):
    """A split puts the same patient on both sides."""


class BundleIntegrityError(CxrEmbedError, ValueError):
    """A saved model bundle failed its integrity check or does not match the data."""


class MissingDependencyError(CxrEmbedError, ImportError):
    """An optional dependency is not installed; the message names the extra."""
