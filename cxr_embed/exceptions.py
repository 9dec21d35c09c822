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
    "NotRegularFileError",
    "ImageAccessError",
    "ImageDecodeError",
    "InvalidHeaderError",
    "HeaderMismatchError",
    "InvalidLUTError",
    "NonFiniteImageError",
    "ConstantImageError",
    "ImageTooLargeError",
    "WorkerCrashError",
    "ManifestError",
    "MissingFilesError",
    "BoxFormatError",
    "BackboneError",
    "WeightsError",
    "StoreError",
    "FingerprintMismatchError",
    "StoreLockedError",
    "MissingIdsError",
    "StoreCorruptError",
    "StoreWriteError",
    "StoreInputError",
    "LeakageError",
    "InvalidInputError",
    "InsufficientDataError",
    "BundleIntegrityError",
    "NotOurFileError",
    "MissingDependencyError",
    "ClinicalDataError",
    "HarmonizationError",
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


class NotRegularFileError(ImageReadError):
    """The path is not a regular file (a FIFO, socket, device or symlink loop); it is never opened."""


class ImageAccessError(ImageReadError, PermissionError):
    """The file exists but may not be read (permissions)."""


class ImageDecodeError(ImageReadError):
    """The bytes could not be decoded: a truncated or corrupt file, or the decoder itself failed.

    Any exception of pydicom, Pillow or numpy while decoding one file ends up as this class (chained
    with ``from``), never as a bare ``IndexError``, ``struct.error`` or ``MemoryError``.
    """


class InvalidHeaderError(ImageReadError):
    """A header value is impossible (Rows <= 0, BitsStored > BitsAllocated, unknown
    PhotometricInterpretation, SamplesPerPixel that does not fit the photometric interpretation)."""


class HeaderMismatchError(InvalidHeaderError):
    """The header disagrees with the pixel data it describes (e.g. Rows x Columns vs the bytes present)."""


class InvalidLUTError(ImageReadError):
    """A Modality LUT, rescale, VOI LUT or window is malformed, zero or not finite."""


class NonFiniteImageError(ImageReadError):
    """Pixels are NaN or infinite (float pixel data, or a rescale that overflows)."""


class ConstantImageError(ImageReadError):
    """Every pixel has the same value after the VOI step: the image carries no information."""


class ImageTooLargeError(ImageReadError):
    """The header declares more pixels than the ``max_pixels`` budget (checked before decoding)."""


# --- manifests -------------------------------------------------------------
class WorkerCrashError(CxrEmbedError, RuntimeError):
    """Decoding worker processes crashed on several files in a row: something systemic, not one file.

    (One file that kills its worker is reported as failed and the run goes on.)
    """


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


class StoreCorruptError(StoreError):
    """What the store read back is damaged: an HDF5 error, a checksum or a length that disagrees."""


class StoreWriteError(StoreError, OSError):
    """Writing to the store failed (disk full, I/O error); rows committed before are intact."""


class StoreInputError(StoreError, ValueError):
    """Rows given to a store writer are malformed (shape, non-finite values, duplicate or bad ids)."""


# --- statistics and models -------------------------------------------------
class LeakageError(CxrEmbedError, ValueError):
    """A split puts the same patient on both sides."""


class InvalidInputError(CxrEmbedError, ValueError):
    """An array or option given to an analysis is malformed (shape, NaN/inf, unknown choice)."""


class InsufficientDataError(CxrEmbedError, ValueError):
    """Too few patients, or too few of one class, for the folds an analysis needs; the message says how many."""


class BundleIntegrityError(CxrEmbedError, ValueError):
    """A saved model bundle failed its integrity check or does not match the data."""


class NotOurFileError(CxrEmbedError, FileExistsError):
    """A path to overwrite holds something cxr_embed did not write (never deleted)."""


class MissingDependencyError(CxrEmbedError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


# --- clinical variables and harmonisation ------------------------------------
class ClinicalDataError(CxrEmbedError, ValueError):
    """Clinical columns beside the embeddings are missing, misnamed or unusable."""


class HarmonizationError(CxrEmbedError, ValueError):
    """Site harmonisation cannot run: no site column, a site too small, an unseen site refused."""
