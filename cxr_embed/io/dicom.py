"""DICOM radiograph -> float image in [0, 1] (air dark, bone bright) + PHI-free metadata.

The display pipeline of DICOM PS3.3 C.11 (Modality LUT -> VOI LUT/window -> Presentation,
i.e. MONOCHROME1 inversion), applied so that every radiograph reaches the CNN the way a
radiologist's viewer would show it, whatever the vendor wrote:

1. decode the stored values (pydicom; compressed transfer syntaxes through the pylibjpeg
   plugins), respecting *BitsStored* (never *BitsAllocated*), the sign (*PixelRepresentation*)
   and the byte order;
2. **Modality LUT**: *Modality LUT Sequence* or *RescaleSlope*/*RescaleIntercept*, giving
   values in physical / manufacturer units;
3. **VOI**: *VOI LUT Sequence*, or *WindowCenter*/*WindowWidth* (with *VOILUTFunction*), or
   the actual min/max, mapped to [0, 1];
4. **MONOCHROME1** images (low values bright) inverted so that air is always dark.

Only non-identifying header fields are returned. Patient identity leaves this module only as
``patient_key``, a keyed hash of *PatientID* (a pseudonym only with a secret salt, see
:func:`patient_key`); names, birth dates, accession numbers and raw identifiers are never
returned or logged.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import (ConstantImageError, CxrEmbedError, ImageDecodeError, ImageReadError, InvalidHeaderError,
                          InvalidLUTError, MultiFrameError, NoPixelDataError, NonFiniteImageError)
from ._display import _apply_modality, _apply_voi, _to_luminance
from ._guards import (_NATIVE_SYNTAXES, _check_budget, _check_file, _check_max_pixels, _check_pixel_length,
                      _deflated_header, _image_geometry, _int_or_none, _tag)

__all__ = ["is_dicom", "read_dicom", "read_dicom_meta", "parse_age", "patient_key", "DEFAULT_SALT", "VOI_MODES",
           "DEFAULT_MAX_PIXELS"]

logger = logging.getLogger(__name__)

#: Salt used for ``patient_key`` when neither ``salt=`` nor ``$CXR_EMBED_SALT`` is given.
#: It is **public** (it is printed here), so keys made with it protect nothing: a 7-digit
#: PatientID is recovered from its key by brute force in about a second. Using it warns.
#: Set a secret salt per project (``salt=`` or ``$CXR_EMBED_SALT``).
DEFAULT_SALT = "cxr_embed-default-salt-NOT-SECRET-set-CXR_EMBED_SALT"

#: Accepted values of ``voi=``.
VOI_MODES = ("auto", "lut", "window", "minmax", "none")

#: Default pixel budget of :func:`read_dicom` / :func:`cxr_embed.read_image` (``max_pixels=``):
#: 100 megapixels, checked from the header before anything is decoded. Generous for radiographs
#: (a 43 x 43 cm detector at 0.1 mm is 18.5 megapixels); it stops decompression bombs, e.g. a
#: 778 KB Deflated DICOM that declares 20000 x 20000 pixels.
DEFAULT_MAX_PIXELS = 100_000_000

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# elements above this size stay on disk until used, so the header is checked before pixels are read
_DEFER_SIZE = 64 * 1024


# --------------------------------------------------------------------------- helpers
def _pydicom():
    from .._utils import require

    return require("pydicom", package="pydicom")


def is_dicom(path: str | os.PathLike) -> bool:
    """Tell by content (never by suffix) whether ``path`` is a DICOM file.

    A file is DICOM when bytes 128-131 are ``b"DICM"`` followed by a (0002,xxxx) file-meta tag
    (the Part 10 preamble), or, for files
    written without preamble (old ACR-NEMA style), when it starts with a group 0x0002/0x0008 tag
    *and* pydicom parses it into a dataset that has pixel data and *Rows*/*Columns*. A text file,
    PNG or JPEG is therefore never taken for DICOM.

    Parameters
    ----------
    path : str or os.PathLike
        Any path; a missing file, a directory or anything that is not a regular file (FIFO, socket,
        device: never opened) gives ``False``.

    Returns
    -------
    bool

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> is_dicom(get_testdata_file("CT_small.dcm"))
    True
    >>> is_dicom(__file__)
    False
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO, socket or device
            return False
        with open(path, "rb") as fh:
            head = fh.read(134)
    except (OSError, ValueError):
        return False
    if head[128:132] == b"DICM":
        # Part 10: the file meta group (0002,xxxx), explicit VR little endian, follows at once
        return head[132:134] == b"\x02\x00"
    # no preamble: the first element must be a (0002,xxxx) or (0008,xxxx) tag, little or big endian
    if head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=256)
        return (any(k in ds for k in _PIXEL_KEYWORDS)
                and int(ds.get("Rows", 0) or 0) > 0 and int(ds.get("Columns", 0) or 0) > 0)
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM"
        return False


def parse_age(value: Any) -> float | None:
    """Convert a DICOM Age String (``"045Y"``, ``"006M"``, ``"010W"``, ``"003D"``) to years.

    Parameters
    ----------
    value : str or None
        The *PatientAge* value. Bare numbers are read as years.

    Returns
    -------
    float or None
        Age in years (months / 12, weeks * 7 / 365.25, days / 365.25); ``None`` when absent
        or unparseable.

    Examples
    --------
    >>> parse_age("045Y"), parse_age("006M"), parse_age("")
    (45.0, 0.5, None)
    """
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", str(value).upper())
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2) or "Y"
    return {"Y": n, "M": n / 12.0, "W": n * 7.0 / 365.25, "D": n / 365.25}[unit]


def patient_key(patient_id: Any, salt: str | None = None) -> str | None:
    """Keyed hash of a patient identifier (16 hex characters), for patient-grouped splits.

    ``blake2b(patient_id, key=sha256(salt), digest_size=8)``: equal identifiers give equal keys
    under the same salt (so grouped splits and manifests built on different days agree), and
    the identifier is not written anywhere.

    What it protects against, and what it does not:

    - With a **secret** salt (``salt=`` or ``$CXR_EMBED_SALT``, e.g. ``secrets.token_hex(16)``,
      kept out of every output), someone holding only the keys (a manifest, a store, a report)
      cannot recover PatientIDs, nor link the keys to another project's.
    - With the **public** :data:`DEFAULT_SALT` it protects nothing: PatientIDs are short and
      structured, so anyone can hash every candidate (all 7-digit ids take about a second) and
      read the identifier back. Using it therefore emits a ``UserWarning``.
    - Never: re-identification from the image itself or from other metadata (age, sex, dates,
      burned-in text), or by anyone who has the salt. This is pseudonymisation, not anonymisation.

    Parameters
    ----------
    patient_id : str or None
        The raw *PatientID*; empty or ``None`` gives ``None``.
    salt : str, optional
        The project's secret. Default: ``$CXR_EMBED_SALT`` when set, else :data:`DEFAULT_SALT`
        with a warning (keys are then reversible).

    Returns
    -------
    str or None

    Warns
    -----
    UserWarning
        When the public :data:`DEFAULT_SALT` is used (by default, when neither ``salt=`` nor
        ``$CXR_EMBED_SALT`` is given, or when it is passed explicitly).

    Examples
    --------
    >>> k = patient_key("12345", salt="my project")
    >>> len(k), k == patient_key("12345", salt="my project"), k == patient_key("12345", salt="other")
    (16, True, False)
    """
    if patient_id is None or str(patient_id).strip() == "":
        return None
    if salt is None:
        salt = os.environ.get("CXR_EMBED_SALT") or DEFAULT_SALT
    if str(salt) == DEFAULT_SALT:
        warnings.warn("patient_key uses the public DEFAULT_SALT: these keys can be reversed by brute force "
                      "(a 7-digit PatientID in about a second), so they are not pseudonyms; fix: set a secret "
                      "salt per project with salt= or the environment variable CXR_EMBED_SALT (e.g. "
                      "python -c 'import secrets; print(secrets.token_hex(16))'), and keep it out of outputs",
                      UserWarning, stacklevel=2)
    key = hashlib.sha256(str(salt).encode("utf-8")).digest()  # any salt length -> 32-byte key
    return hashlib.blake2b(str(patient_id).strip().encode("utf-8"), key=key, digest_size=8).hexdigest()


def _spacing(ds) -> tuple[float, float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        if v is None:
            continue
        try:
            row, col = float(v[0]), float(v[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0:  # some CR files write [0, 0]
            return (row, col)
    return None


def _header_meta(ds, salt: str | None) -> dict:
    """The PHI-free metadata of a dataset (never name, birth date, accession, raw ids)."""
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    sex = str(ds.get("PatientSex", "") or "").strip().upper() or None
    laterality = ds.get("ImageLaterality") or ds.get("Laterality")
    return {
        "source": "dicom",
        "modality": str(ds.get("Modality", "") or "").strip() or None,
        "view_position": str(ds.get("ViewPosition", "") or "").strip().upper() or None,
        "laterality": str(laterality).strip().upper() if laterality else None,
        "body_part": str(ds.get("BodyPartExamined", "") or "").strip().upper() or None,
        "sex": sex,
        "age_years": parse_age(ds.get("PatientAge")),
        "pixel_spacing": _spacing(ds),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "") or "").strip() or None,
        "transfer_syntax": str(ts) if ts else None,
        "rows": _int_or_none(ds.get("Rows")),
        "columns": _int_or_none(ds.get("Columns")),
        "bits_stored": _int_or_none(ds.get("BitsStored")),
        "number_of_frames": _int_or_none(ds.get("NumberOfFrames", 1)) or 1,
        "patient_key": patient_key(ds.get("PatientID"), salt),
    }


def _dcmread(path: Path, *, header_only: bool = False, max_pixels: int | None = None):
    """Parse a DICOM file: the header only, or everything with elements over 64 KiB left on disk.

    Pixel data is deferred (read when first used), so the header can be checked against
    ``max_pixels`` before any pixel is read. A Deflated file is inflated whole by pydicom, so its
    image header is first read from a bounded inflation (:func:`_deflated_header`) and the budget
    checked on it.
    """
    pydicom = _pydicom()

    if not is_dicom(path):
        raise ImageReadError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no parseable "
                                   "DICOM header); fix: use read_image for PNG/JPEG/TIFF, or re-export the DICOM")
    try:
        header = _deflated_header(path)
        if header is not None:
            if header_only:
                return header
            rows, cols = _int_or_none(header.get("Rows")), _int_or_none(header.get("Columns"))
            if max_pixels is not None and rows and cols and rows > 0 and cols > 0:
                _check_budget(header, path, max_pixels)
        if header_only:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        else:  # a deflated file is in memory anyway (its offsets are not file offsets): never defer there
            ds = pydicom.dcmread(path, force=True, defer_size=None if header is not None else _DEFER_SIZE)
    except CxrEmbedError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged headers
        raise ImageDecodeError(path, f"DICOM header could not be parsed ({type(e).__name__}: {e}); the file is "
                                     "probably truncated or corrupt; fix: re-copy or re-export it") from e
    _fill_transfer_syntax(ds, path)
    return ds


def _fill_transfer_syntax(ds, path: Path) -> None:
    """Files without file meta (ACR-NEMA style) lack a TransferSyntaxUID; pydicom then cannot
    decode their (necessarily uncompressed) pixels. Infer it from the encoding the header was read in."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    fm = getattr(ds, "file_meta", None)
    if fm is not None and fm.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if fm is None:
        ds.file_meta = fm = FileMetaDataset()
    fm.TransferSyntaxUID = uid
    logger.info("%s: no TransferSyntaxUID in file meta; inferred %s from the header encoding", path, uid.name)


def read_dicom_meta(path: str | os.PathLike, *, salt: str | None = None) -> dict:
    """Read only the header of a DICOM file: the PHI-free metadata of :func:`read_dicom`.

    Cheap (pixel data is not read), for building manifests of DICOM folders.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM file (recognised by content).
    salt : str, optional
        Salt of ``patient_key`` (see :func:`patient_key`).

    Returns
    -------
    meta : dict
        The keys of :func:`read_dicom`'s ``meta`` except ``voi_applied`` and ``window``.

    Raises
    ------
    ImageNotFoundError, ImageReadError

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> read_dicom_meta(get_testdata_file("CT_small.dcm"))["modality"]
    'CT'
    """
    path = Path(path)
    _check_file(path)
    ds = _dcmread(path, header_only=True)
    try:
        return _header_meta(ds, salt)
    except CxrEmbedError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed value of an element we read
        raise InvalidHeaderError(path, f"DICOM header values could not be interpreted ({type(e).__name__}: {e}); "
                                       "fix: re-export the file") from e


# --------------------------------------------------------------------------- header checks


# --------------------------------------------------------------------------- pixel steps


# --------------------------------------------------------------------------- public reader
def read_dicom(path: str | os.PathLike, *, voi: str = "auto", window: tuple[float, float] | None = None,
               frame: int | None = None, salt: str | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Read a DICOM radiograph as displayed: float32 ``(H, W)`` in [0, 1], air dark, bone bright.

    Steps, in the order of DICOM PS3.3 C.11: decode (BitsStored, sign, byte order, compression)
    -> Modality LUT (sequence or rescale slope/intercept) -> VOI -> MONOCHROME1 inversion.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM file, recognised by content (suffix irrelevant).
    voi : {"auto", "lut", "window", "minmax", "none"}, default "auto"
        VOI step. ``"auto"``: VOI LUT Sequence if present, else the first WindowCenter/WindowWidth,
        else ``"minmax"``. ``"lut"`` / ``"window"``: require that element (error when absent).
        ``"minmax"``: actual min/max of the modality-LUT output -> [0, 1]. ``"none"``: the full
        BitsStored range (through the rescale) -> [0, 1], no contrast stretch.
    window : tuple (center, width), optional
        Explicit window in modality-LUT units (e.g. Hounsfield units); overrides ``voi``.
        The file's *VOILUTFunction* (LINEAR, LINEAR_EXACT, SIGMOID) is honoured.
    frame : int, optional
        0-based frame index, required for files with more than one frame.
    salt : str, optional
        Salt of ``meta["patient_key"]``; default ``$CXR_EMBED_SALT`` or :data:`DEFAULT_SALT`
        (see :func:`patient_key`).
    max_pixels : int or None, default DEFAULT_MAX_PIXELS (100 megapixels)
        Pixel budget: ``Rows x Columns x NumberOfFrames`` from the header must not exceed it,
        checked before any pixel is read or inflated. ``None``: no limit.

    Returns
    -------
    image : ndarray of shape (H, W), float32
        Values in [0, 1], never NaN or infinite, never constant; air dark, bone bright.
    meta : dict
        ``source`` ("dicom"), ``modality``, ``view_position``, ``laterality``, ``body_part``, ``sex``,
        ``age_years`` (float), ``pixel_spacing`` ((row, col) mm or None), ``photometric_interpretation``,
        ``transfer_syntax`` (UID str), ``rows``, ``columns``, ``bits_stored``, ``number_of_frames``,
        ``frame``, ``voi_applied`` ("lut", "window", "minmax", "none" or "color"), ``window``
        ((center, width) or None), ``inverted`` (bool, MONOCHROME1), ``patient_key`` (salted hash
        or None). Never a name, birth date, accession number or raw identifier.

    Raises
    ------
    ImageNotFoundError
        Missing path or a directory (also a ``FileNotFoundError``).
    NoPixelDataError
        A DICOM without pixel data (structured report, presentation state, truncated header).
    MultiFrameError
        More than one frame and ``frame=None``, or ``frame`` out of range.
    NotRegularFileError, ImageAccessError
        A FIFO, socket, device or symlink loop (never opened); a file that may not be read.
    ImageTooLargeError
        The header declares more than ``max_pixels`` pixels.
    InvalidHeaderError, HeaderMismatchError
        Impossible header values (Rows, BitsAllocated, BitsStored, PhotometricInterpretation,
        SamplesPerPixel, NumberOfFrames ...), or a header that disagrees with the pixel data.
    InvalidLUTError
        Malformed Modality/VOI LUT Sequence; RescaleSlope/Intercept, WindowCenter/Width that are
        not finite, a zero slope, a width <= 0.
    NonFiniteImageError
        NaN or infinite values in float pixel data.
    ConstantImageError
        Every pixel has the same value, before or after the VOI step.
    ImageDecodeError
        Truncated or corrupt file, undecodable pixel data, or any other failure while decoding.
    ImageReadError
        Empty or non-DICOM file; ``voi`` asks for an element the file lacks. Every message starts
        with the path, names the DICOM tag at fault and gives a fix.
    ValueError
        Invalid ``voi``, ``window`` or ``max_pixels`` argument.
    TypeError
        ``frame`` is not an int.

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> image, meta = read_dicom(get_testdata_file("MR_small.dcm"))
    >>> image.shape, image.dtype, meta["voi_applied"]
    ((64, 64), dtype('float32'), 'window')
    >>> image, _ = read_dicom(get_testdata_file("CT_small.dcm"), window=(40, 400))  # soft tissue
    >>> float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    True
    """
    voi, window, max_pixels = _check_read_arguments(voi, window, frame, max_pixels)
    path = Path(path)
    st = _check_file(path)
    ds = _dcmread(path, max_pixels=max_pixels)
    try:
        return _read_pixels(ds, path, st, voi=voi, window=window, frame=frame, salt=salt, max_pixels=max_pixels)
    except CxrEmbedError:
        raise
    except MemoryError as e:
        raise ImageDecodeError(path, "ran out of memory while decoding; fix: free memory, or lower max_pixels= "
                                     "to refuse images this large") from e
    except Exception as e:  # noqa: BLE001 - whatever pydicom/numpy raise on a damaged file, never leak it raw
        raise ImageDecodeError(path, f"could not be decoded ({type(e).__name__}: {e}); the file is probably "
                                     "corrupt; fix: re-copy or re-export it") from e


def _check_read_arguments(voi, window, frame, max_pixels):
    """Validate the caller's arguments (``ValueError``/``TypeError``: these are not file errors)."""
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    if frame is not None and (not isinstance(frame, (int, np.integer)) or isinstance(frame, bool)):
        raise TypeError(f"frame must be an int or None, got {type(frame).__name__}")
    if window is not None:
        try:
            center, width = (float(v) for v in window)
        except (TypeError, ValueError) as e:
            raise ValueError(f"window must be (center, width) numbers, got {window!r}") from e
        if not (math.isfinite(center) and math.isfinite(width)):
            raise ValueError(f"window center and width must be finite, got {window!r}")
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        window = (center, width)
    return voi, window, _check_max_pixels(max_pixels)


def _read_pixels(ds, path: Path, st: os.stat_result, *, voi, window, frame, salt, max_pixels):
    """The body of :func:`read_dicom` once the file is parsed (header checks, decoding, display steps)."""
    arr, meta, info = _decode_pixels(ds, path, st, frame=frame, salt=salt, max_pixels=max_pixels)
    if info["color"]:
        return _color_image(arr, ds, path, meta, info)
    lo, hi = _stored_extremes(arr, path, info["keyword"])
    image = _grayscale_steps(arr, ds, path, meta, info, voi=voi, window=window, lo=lo, hi=hi)
    return image.astype(np.float32), meta


def _decode_pixels(ds, path: Path, st: os.stat_result, *, frame, salt, max_pixels, reduced_to=None):
    """Check the header against the pixel data and decode the stored values of one frame.

    Returns ``(arr, meta, info)``: the stored values (BitsStored masked, sign-extended, native byte
    order), the PHI-free metadata, and ``info`` (``keyword``, ``photometric``, ``signed``,
    ``color``, ``reduction``: the factor of a reduced decode, 1 when decoded in full).
    ``reduced_to`` (None, or a callable ``(rows, cols) -> (rows, cols)`` giving the smallest size
    needed) allows a JPEG 2000 / JPEG frame to be decoded at the smallest resolution that still
    covers it (:mod:`._codecs`); it is called only after the header checks.
    """
    if len(ds) == 0:
        # pydicom gives up on a broken element (e.g. pixel data cut short) and returns nothing
        header = _dcmread(path, header_only=True)
        what = "its pixel data is cut short or corrupt" if len(header) else "no data element could be parsed"
        raise ImageDecodeError(path, f"DICOM file meta is readable but {what}: the file is truncated or corrupt "
                                     f"({st.st_size} bytes); fix: re-copy or re-export it")
    meta = _header_meta(ds, salt)

    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            # the header describes an image but the file stops before its pixels
            raise ImageDecodeError(path, f"header describes a {meta['rows']}x{meta['columns']} image but the file "
                                         f"ends ({st.st_size} bytes) before its PixelData: the file is truncated; "
                                         "fix: re-copy or re-download it")
        raise NoPixelDataError(path, f"DICOM has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}, "
                                     f"{st.st_size} bytes; a structured report, presentation state, or a truncated "
                                     "file); fix: skip it, or re-copy the file if it should be an image")
    geometry = _image_geometry(ds, path, keyword)
    _check_budget(ds, path, max_pixels)
    _check_pixel_length(ds, path, keyword, geometry, st.st_size)
    n_frames = geometry["frames"]
    if frame is None and n_frames > 1:
        raise MultiFrameError(path, f"has NumberOfFrames={n_frames}; fix: pass frame=<0..{n_frames - 1}>")
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise MultiFrameError(path, f"frame={frame} is out of range for NumberOfFrames={n_frames}; "
                                    f"fix: pass frame=<0..{n_frames - 1}>")
    index = int(frame) if frame is not None else 0

    from pydicom.pixels import pixel_array

    pi = geometry["photometric"]
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bs = meta["bits_stored"]
    reduction = 1.0
    arr = None
    masked = False  # BitsStored already applied here (else checked after pydicom below)
    if reduced_to is not None and n_frames == 1 and keyword == "PixelData" and not signed and pi.startswith("MONO"):
        arr, reduction = _decode_reduced(ds, path, meta, reduced_to((geometry["Rows"], geometry["Columns"])))
    which = index if n_frames > 1 else None
    try:
        if arr is None and _masks_itself(ds, meta, keyword, signed):
            # uncompressed little-endian with unused high bits (most CR/DX): one masking pass over
            # a read-only view of the pixel data, instead of pydicom's copy + two shift passes
            view = pixel_array(ds, index=which, view_only=True, correct_unused_bits=False)
            arr = np.bitwise_and(view, np.asarray((1 << bs) - 1, dtype=view.dtype))
            masked = True
        elif arr is None:
            arr = pixel_array(ds, index=which)
    except BaseException as e:  # noqa: BLE001 - decoder errors come in many types; all mean "cannot decode"
        # BaseException: a Rust decoder's panic (pyo3's PanicException, e.g. pylibjpeg-rle on an
        # overrunning segment) is not an Exception; only an interrupt or an exit must pass through
        if isinstance(e, (CxrEmbedError, KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        ts = meta["transfer_syntax"]
        fix = "the file may be truncated or corrupt: re-copy or re-export it"
        if ts and ts not in _NATIVE_SYNTAXES:
            fix += ("; for compressed data check that the pylibjpeg plugins are installed "
                    "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle)")
        raise ImageDecodeError(path, f"pixel data could not be decoded (transfer syntax {ts}; "
                                     f"{type(e).__name__}: {e}); fix: {fix}") from e
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and n_frames == 1:  # pragma: no cover - defensive
        arr = arr[0]

    # pydicom 3 already masks/sign-extends; repeat the mask so BitsAllocated never leaks in
    if not masked and np.issubdtype(arr.dtype, np.unsignedinteger) and bs and bs < arr.dtype.itemsize * 8:
        limit = (1 << bs) - 1
        if arr.size and int(arr.max()) > limit:  # a reduction pass; the masked copy only when needed
            arr = arr & np.asarray(limit, dtype=arr.dtype)

    meta["frame"] = int(frame) if frame is not None else None
    meta["window"] = None
    meta["inverted"] = False
    color = pi == "PALETTE COLOR" or (arr.ndim == 3 and arr.shape[-1] in (3, 4))
    if not color and arr.ndim != 2:
        raise ImageDecodeError(path, f"expected a single 2-D grayscale frame, decoded shape {arr.shape}; "
                                     "fix: pass frame= for multi-frame files")
    return arr, meta, {"keyword": keyword, "photometric": pi, "signed": signed, "color": color,
                       "reduction": reduction}


#: Uncompressed little-endian transfer syntaxes whose pixel data can be viewed without a copy
_LITTLE_ENDIAN_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _masks_itself(ds, meta: dict, keyword: str, signed: bool) -> bool:
    """True when the stored values are best masked here: unsigned, uncompressed little-endian,
    8/16/32 bits allocated with fewer bits stored (pydicom would copy, then shift twice)."""
    ba = int(ds.get("BitsAllocated", 0) or 0)
    bs = meta["bits_stored"]
    return (keyword == "PixelData" and not signed and meta["transfer_syntax"] in _LITTLE_ENDIAN_NATIVE
            and ba in (8, 16, 32) and bool(bs) and 0 < bs < ba)


def _decode_reduced(ds, path: Path, meta: dict, reduced_to) -> tuple[np.ndarray | None, float]:
    """(stored values, factor) of a JPEG 2000 / JPEG frame decoded reduced, or (None, 1.0) to decode in full."""
    from . import _codecs

    ts = meta["transfer_syntax"]
    if ts not in _codecs.J2K_SYNTAXES + _codecs.JPEG_BASELINE_SYNTAXES:
        return None, 1.0
    try:
        from pydicom.encaps import generate_frames

        data = next(generate_frames(ds.PixelData, number_of_frames=1))
        got = _codecs.decode_pillow_reduced(data, reduced_to, precision=meta["bits_stored"])
    except Exception as e:  # noqa: BLE001 - any trouble: the full decoder, with its own errors, decides
        logger.debug("%s: reduced decode not possible (%s: %s); decoding in full", path, type(e).__name__, e)
        return None, 1.0
    if got is None:
        return None, 1.0
    arr, factor = got
    logger.debug("%s: decoded at 1/%g resolution %s", path, factor, arr.shape)
    return arr, float(factor)


def _color_image(arr: np.ndarray, ds, path: Path, meta: dict, info: dict) -> tuple[np.ndarray, dict]:
    """Colour DICOM (RGB, YBR_*, PALETTE COLOR) -> luminance in [0, 1], with a warning."""
    from pydicom.pixels import apply_color_lut

    pi, keyword, bs = info["photometric"], info["keyword"], meta["bits_stored"]
    # colour: VOI does not apply to RGB; collapse to luminance
    if pi == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)  # uint8 or uint16, per the palette's depth
        except Exception as e:  # noqa: BLE001 - malformed palette descriptors/data
            raise InvalidLUTError(path, f"the palette ({_tag('RedPaletteColorLookupTableDescriptor')} and "
                                        f"its data) could not be applied ({type(e).__name__}: {e}); fix: "
                                        "re-export the file") from e
        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    else:
        rgb = arr  # pydicom returns YBR_* already converted to RGB
        top = float(2 ** (bs or 8) - 1)
    warnings.warn(f"{path}: colour DICOM ({pi}) converted to luminance (ITU-R BT.601); a chest "
                  "radiograph is normally MONOCHROME1/2, check that this file is one", UserWarning, stacklevel=3)
    image = np.clip(_to_luminance(rgb, top), 0.0, 1.0)
    if image.size and float(image.max()) <= float(image.min()):
        raise ConstantImageError(path, f"every pixel of this colour image ({_tag(keyword)}) has the same "
                                       "luminance: the image is blank; fix: exclude the file or re-export it")
    meta["voi_applied"] = "color"
    logger.debug("%s: %s -> luminance", path, pi)
    return image.astype(np.float32), meta


def _stored_extremes(arr: np.ndarray, path: Path, keyword: str) -> tuple[float, float]:
    """(min, max) of the stored values; NaN/inf and constant images are named errors."""
    if arr.dtype.kind == "f":  # float pixel data is the only source of NaN/inf; integers cannot hold them
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise NonFiniteImageError(path, f"{bad} of {arr.size} pixels of {_tag(keyword)} are NaN or infinite; "
                                            "an image with them cannot be shown or embedded; fix: re-export the "
                                            "file without NaN/inf (e.g. replace them by the background value)")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise ConstantImageError(path, f"every pixel of {_tag(keyword)} has the stored value {lo:g}: the image is "
                                       "blank; fix: exclude the file, or re-export the real image")
    return lo, hi


def _grayscale_steps(arr: np.ndarray, ds, path: Path, meta: dict, info: dict, *, voi, window, lo: float,
                     hi: float) -> np.ndarray:
    """Modality LUT -> VOI -> MONOCHROME1 inversion of stored values ``arr``: float64 in [0, 1].

    Elementwise, so it maps the whole image or a lookup table of stored values alike; ``lo`` and
    ``hi`` are the extremes of the image's stored values. Sets ``voi_applied``, ``window`` and
    ``inverted`` in ``meta``.
    """
    keyword, signed, pi = info["keyword"], info["signed"], info["photometric"]
    # Modality LUT: sequence or rescale slope/intercept (identity when neither is present)
    x, x_lo, x_hi, modality_applied = _apply_modality(arr, ds, path, lo, hi)
    if voi == "none" and ("ModalityLUTSequence" in ds or keyword != "PixelData"):
        # a Modality LUT Sequence maps into its own output range and float pixel data has no
        # BitsStored: the stored-bits range is meaningless there, so use the actual range
        voi = "minmax"
        logger.info("%s: no stored-bits range (Modality LUT Sequence or float pixels); voi='none' -> 'minmax'", path)

    image, step, used_window = _apply_voi(x, ds, voi, window, path, signed, modality_applied, x_lo, x_hi)
    meta["voi_applied"] = step
    meta["window"] = used_window

    if pi == "MONOCHROME1":
        image = 1.0 - image
        meta["inverted"] = True
    logger.debug("%s: %s, VOI=%s, inverted=%s", path, pi, step, meta["inverted"])
    return np.clip(image, 0.0, 1.0)
