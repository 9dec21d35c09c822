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
``patient_key``, a keyed one-way hash of *PatientID*; names, birth dates, accession numbers and
raw identifiers are never returned or logged.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import CxrEmbedError, ImageNotFoundError, ImageReadError, MultiFrameError, NoPixelDataError

__all__ = ["is_dicom", "read_dicom", "read_dicom_meta", "parse_age", "patient_key", "DEFAULT_SALT", "VOI_MODES"]

logger = logging.getLogger(__name__)

#: Salt used for ``patient_key`` when neither ``salt=`` nor ``$CXR_EMBED_SALT`` is given.
#: It is **not secret** (it is printed here): it only makes keys differ from a bare hash of the
#: PatientID. Set your own salt (``CXR_EMBED_SALT``) to make keys unlinkable across projects.
DEFAULT_SALT = "cxr_embed-default-salt-NOT-SECRET-set-CXR_EMBED_SALT"

#: Accepted values of ``voi=``.
VOI_MODES = ("auto", "lut", "window", "minmax", "none")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
# luminance weights of ITU-R BT.601 (those of Pillow's "L" conversion)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


# --------------------------------------------------------------------------- helpers
def _check_file(path: Path) -> None:
    """Raise the documented errors for a missing path, a directory or an empty file."""
    if not path.exists():
        raise ImageNotFoundError(path, "no such file; fix: check the path (and the manifest's root=)")
    if path.is_dir():
        raise ImageNotFoundError(path, "is a directory, not an image file; fix: pass a file inside it "
                                       "(or use load_manifest for a whole folder)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes); fix: re-copy or re-export the image")


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
        Any path; a missing file or a directory gives ``False``.

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
        with open(path, "rb") as fh:
            head = fh.read(134)
    except OSError:
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
    """Salted one-way hash of a patient identifier (16 hex characters).

    ``blake2b(patient_id, key=salt, digest_size=8)``; the raw identifier cannot be recovered,
    and equal identifiers give equal keys under the same salt, so patient-grouped splits work.

    Parameters
    ----------
    patient_id : str or None
        The raw *PatientID*; empty or ``None`` gives ``None``.
    salt : str, optional
        Default: ``$CXR_EMBED_SALT`` when set, else :data:`DEFAULT_SALT` (not secret).

    Returns
    -------
    str or None

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
    key = hashlib.sha256(str(salt).encode("utf-8")).digest()  # any salt length -> 32-byte key
    return hashlib.blake2b(str(patient_id).strip().encode("utf-8"), key=key, digest_size=8).hexdigest()


def _float_or_none(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _first(v):
    """First value of a possibly multi-valued element (WindowCenter may hold several)."""
    from pydicom.multival import MultiValue

    if isinstance(v, (MultiValue, list, tuple)):
        return v[0] if len(v) else None
    return v


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


def _int_or_none(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
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


def _dcmread(path: Path, **kwargs):
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    if not is_dicom(path):
        raise ImageReadError(path, "not a DICOM file (no 'DICM' marker at byte 128 and no parseable "
                                   "DICOM header); fix: use read_image for PNG/JPEG/TIFF, or re-export the DICOM")
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as e:
        raise ImageReadError(path, f"DICOM header could not be parsed ({type(e).__name__}: {e}); the file is "
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
    ds = _dcmread(path, stop_before_pixels=True)
    return _header_meta(ds, salt)


# --------------------------------------------------------------------------- pixel steps
def _bits_range(ds, signed: bool) -> tuple[float, float]:
    bs = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if signed:
        return float(-(2 ** (bs - 1))), float(2 ** (bs - 1) - 1)
    return 0.0, float(2 ** bs - 1)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1.0:  # LINEAR with the minimum width 1 is a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi_lut(x: np.ndarray, ds) -> np.ndarray:
    """Apply the first VOI LUT Sequence item to modality-LUT output, result in [0, 1].

    The lookup is pydicom's ``apply_voi`` (handles US/OW LUT data and 8-bit packing); the output
    is divided by ``2**bits - 1`` from the LUT Descriptor, or by the LUT's real depth when the
    descriptor understates it (seen in the wild).
    """
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    nbits = int(item.LUTDescriptor[2])
    out = apply_voi(np.rint(x).astype(np.int64), ds, index=0).astype(np.float64)
    top = float(2 ** nbits - 1)
    peak = float(out.max(initial=0))
    if peak > top:
        top = float(2 ** int(np.ceil(np.log2(peak + 1))) - 1)
    return out / top


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)


def _apply_voi(x: np.ndarray, ds, voi: str, window, path: Path,
               signed: bool, modality_applied: bool) -> tuple[np.ndarray, str, tuple | None]:
    """VOI step. Returns (image in [0, 1], name of the step that ran, (center, width) or None)."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
    if window is not None:
        try:
            center, width = (float(v) for v in window)
        except (TypeError, ValueError) as e:
            raise ValueError(f"window must be (center, width) numbers, got {window!r}") from e
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        return _window(x, center, width, function), "window", (center, width)

    has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    wc, ww = _float_or_none(_first(ds.get("WindowCenter"))), _float_or_none(_first(ds.get("WindowWidth")))
    has_window = wc is not None and ww is not None and ww > 0

    if voi in ("auto", "lut") and has_lut:
        return _voi_lut(x, ds), "lut", None
    if voi == "lut":
        raise ImageReadError(path, "voi='lut' but the file has no VOI LUT Sequence; fix: use voi='auto'")
    if voi in ("auto", "window") and has_window:
        return _window(x, wc, ww, function), "window", (wc, ww)
    if voi == "window":
        raise ImageReadError(path, "voi='window' but the file has no usable WindowCenter/WindowWidth; "
                                   "fix: use voi='auto' or pass window=(center, width)")
    if voi == "none":
        lo, hi = _bits_range(ds, signed)
        if modality_applied:
            slope = _float_or_none(ds.get("RescaleSlope"))
            inter = _float_or_none(ds.get("RescaleIntercept"))
            slope = 1.0 if slope is None else slope
            inter = 0.0 if inter is None else inter
            lo, hi = sorted((lo * slope + inter, hi * slope + inter))
        return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0), "none", None
    return _minmax(x), "minmax", None


def _to_luminance(rgb: np.ndarray, top: float) -> np.ndarray:
    return (rgb[..., :3].astype(np.float64) @ _LUMA) / top


# --------------------------------------------------------------------------- public reader
def read_dicom(path: str | os.PathLike, *, voi: str = "auto", window: tuple[float, float] | None = None,
               frame: int | None = None, salt: str | None = None) -> tuple[np.ndarray, dict]:
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
        Salt of ``meta["patient_key"]``; default ``$CXR_EMBED_SALT`` or :data:`DEFAULT_SALT`.

    Returns
    -------
    image : ndarray of shape (H, W), float32
        Values in [0, 1]; air dark, bone bright.
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
    ImageReadError
        Empty, truncated, corrupt or non-DICOM file; undecodable pixel data; ``voi`` asks for an
        element the file lacks. Messages start with the path and give a fix.
    ValueError
        Invalid ``voi`` or ``window`` argument.
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
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    if frame is not None and (not isinstance(frame, (int, np.integer)) or isinstance(frame, bool)):
        raise TypeError(f"frame must be an int or None, got {type(frame).__name__}")
    path = Path(path)
    _check_file(path)
    ds = _dcmread(path)
    if len(ds) == 0:
        # pydicom gives up on a broken element (e.g. pixel data cut short) and returns nothing
        header = _dcmread(path, stop_before_pixels=True)
        what = "its pixel data is cut short or corrupt" if len(header) else "no data element could be parsed"
        raise ImageReadError(path, f"DICOM file meta is readable but {what}: the file is truncated or corrupt "
                                   f"({path.stat().st_size} bytes); fix: re-copy or re-export it")
    meta = _header_meta(ds, salt)

    if not any(k in ds for k in _PIXEL_KEYWORDS):
        size = path.stat().st_size
        if meta["rows"] and meta["columns"] and "BitsAllocated" in ds:
            # the header describes an image but the file stops before its pixels
            raise ImageReadError(path, f"header describes a {meta['rows']}x{meta['columns']} image but the file "
                                       f"ends ({size} bytes) before its PixelData: the file is truncated; "
                                       "fix: re-copy or re-download it")
        raise NoPixelDataError(path, f"DICOM has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}, "
                                     f"{size} bytes; a structured report, presentation state, or a truncated "
                                     "file); fix: skip it, or re-copy the file if it should be an image")
    n_frames = meta["number_of_frames"]
    if frame is None and n_frames > 1:
        raise MultiFrameError(path, f"has NumberOfFrames={n_frames}; fix: pass frame=<0..{n_frames - 1}>")
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise MultiFrameError(path, f"frame={frame} is out of range for NumberOfFrames={n_frames}; "
                                    f"fix: pass frame=<0..{n_frames - 1}>")
    index = int(frame) if frame is not None else 0

    _pydicom()
    from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

    pi = (meta["photometric_interpretation"] or "MONOCHROME2").upper()
    try:
        arr = pixel_array(ds, index=index if n_frames > 1 else None)
    except Exception as e:  # noqa: BLE001 - decoder errors come in many types; all mean "cannot decode"
        if isinstance(e, CxrEmbedError):
            raise
        ts = meta["transfer_syntax"]
        fix = "the file may be truncated or corrupt: re-copy or re-export it"
        if ts and ts not in _NATIVE_SYNTAXES:
            fix += ("; for compressed data check that the pylibjpeg plugins are installed "
                    "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle)")
        raise ImageReadError(path, f"pixel data could not be decoded (transfer syntax {ts}; "
                                   f"{type(e).__name__}: {e}); fix: {fix}") from e
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and n_frames == 1:  # pragma: no cover - defensive
        arr = arr[0]

    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bs = meta["bits_stored"]
    # pydicom 3 already masks/sign-extends; repeat the mask so BitsAllocated never leaks in
    if np.issubdtype(arr.dtype, np.unsignedinteger) and bs and bs < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bs) - 1, dtype=arr.dtype)

    meta["frame"] = int(frame) if frame is not None else None
    meta["window"] = None
    meta["inverted"] = False

    if pi == "PALETTE COLOR" or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        # colour: VOI does not apply to RGB; collapse to luminance
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)  # uint8 or uint16, per the palette's depth
            top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
        else:
            rgb = arr  # pydicom returns YBR_* already converted to RGB
            top = float(2 ** (bs or 8) - 1)
        warnings.warn(f"{path}: colour DICOM ({pi}) converted to luminance (ITU-R BT.601); a chest "
                      "radiograph is normally MONOCHROME1/2, check that this file is one", UserWarning, stacklevel=2)
        image = np.clip(_to_luminance(rgb, top), 0.0, 1.0)
        meta["voi_applied"] = "color"
        logger.debug("%s: %s -> luminance", path, pi)
        return image.astype(np.float32), meta

    if arr.ndim != 2:
        raise ImageReadError(path, f"expected a single 2-D grayscale frame, decoded shape {arr.shape}; "
                                   "fix: pass frame= for multi-frame files")

    # Modality LUT: sequence or rescale slope/intercept (identity when neither is present)
    modality_applied = "RescaleSlope" in ds or "RescaleIntercept" in ds  # the range then moves with it
    try:
        x = apply_modality_lut(arr, ds).astype(np.float64, copy=False)
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(path, f"Modality LUT / rescale could not be applied ({type(e).__name__}: {e}); "
                                   "fix: check RescaleSlope/RescaleIntercept or the Modality LUT Sequence") from e
    if voi == "none" and ("ModalityLUTSequence" in ds or "PixelData" not in ds):
        # a Modality LUT Sequence maps into its own output range and float pixel data has no
        # BitsStored: the stored-bits range is meaningless there, so use the actual range
        voi = "minmax"
        logger.info("%s: no stored-bits range (Modality LUT Sequence or float pixels); voi='none' -> 'minmax'", path)

    image, step, used_window = _apply_voi(x, ds, voi, window, path, signed, modality_applied)
    meta["voi_applied"] = step
    meta["window"] = used_window

    if pi == "MONOCHROME1":
        image = 1.0 - image
        meta["inverted"] = True
    logger.debug("%s: %s, VOI=%s, inverted=%s", path, pi, step, meta["inverted"])
    return np.clip(image, 0.0, 1.0).astype(np.float32), meta
