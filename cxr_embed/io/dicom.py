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

import errno
import hashlib
import logging
import math
import os
import re
import stat
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import (ConstantImageError, CxrEmbedError, HeaderMismatchError, ImageAccessError,
                          ImageDecodeError, ImageNotFoundError, ImageReadError, ImageTooLargeError,
                          InvalidHeaderError, InvalidLUTError, MultiFrameError, NoPixelDataError,
                          NonFiniteImageError, NotRegularFileError)

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
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
                        "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3,
                        "YBR_RCT": 3, "HSV": 3, "ARGB": 4, "CMYK": 4}
# elements above this size stay on disk until used, so the header is checked before pixels are read
_DEFER_SIZE = 64 * 1024
# at most this much of a Deflated file is inflated to find its image header (group 0028)
_DEFLATE_HEADER_LIMIT = 16 * 2**20
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# luminance weights of ITU-R BT.601 (those of Pillow's "L" conversion)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


# --------------------------------------------------------------------------- helpers
def _tag(keyword: str) -> str:
    """``"RescaleSlope (0028,1053)"``: a DICOM keyword with its tag, for error messages."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_file(path: Path) -> os.stat_result:
    """Raise the documented errors for anything but a readable, non-empty regular file.

    Only ``os.stat`` is called: a FIFO, socket or device is refused without being opened (opening
    a FIFO blocks until a writer appears).
    """
    try:
        st = os.stat(path)
    except ValueError as e:  # e.g. an embedded NUL byte: no file can have that name
        raise ImageNotFoundError(path, f"is not a valid file name ({e}); fix: check the path (and the manifest)") from e
    except FileNotFoundError as e:
        what = ("is a symbolic link to a missing file" if os.path.islink(path)
                else "no such file")
        raise ImageNotFoundError(path, f"{what}; fix: check the path (and the manifest's root=)") from e
    except NotADirectoryError as e:
        raise ImageNotFoundError(path, "no such file (a component of the path is a file, not a folder); "
                                       "fix: check the path (and the manifest's root=)") from e
    except PermissionError as e:
        raise ImageAccessError(path, f"cannot be examined ({e.strerror}); fix: give read permission to "
                                     "the folders on the path") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFileError(path, "is a symbolic link loop (it never reaches a file); fix: repair "
                                            "or delete the link") from e
        raise ImageNotFoundError(path, f"cannot be examined ({type(e).__name__}: {e.strerror or e}); "
                                       "fix: check the path") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageNotFoundError(path, "is a directory, not an image file; fix: pass a file inside it "
                                       "(or use load_manifest for a whole folder)")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise NotRegularFileError(path, f"is {kind}, not a regular file; it was not opened (reading it could "
                                        "block forever or never end); fix: pass the image file itself")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes); fix: re-copy or re-export the image")
    if not os.access(path, os.R_OK):
        raise ImageAccessError(path, "exists but may not be read (permission denied); fix: give the user "
                                     "running cxr_embed read permission (chmod/chown), or copy the file")
    return st


def _check_max_pixels(max_pixels) -> int | None:
    """Validate the ``max_pixels=`` argument: a positive int or None (no limit)."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}")
    return int(max_pixels)


def _budget_error(path: Path, n_pixels: int, max_pixels: int, what: str) -> ImageTooLargeError:
    """The :class:`ImageTooLargeError` for ``n_pixels`` over the budget (``what`` describes the size)."""
    return ImageTooLargeError(
        path, f"{what} = {n_pixels:,} pixels, more than the pixel budget max_pixels={max_pixels:,} "
              f"({max_pixels / 1e6:g} megapixels); nothing was decoded (a small file declaring a huge image "
              "is a decompression bomb); fix: if the image is genuine, pass a larger max_pixels= to "
              "read_image/read_dicom/extract (max_pixels=None: no limit)")


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


def _file_meta_end(fh) -> tuple[str | None, int]:
    """(TransferSyntaxUID, offset where the dataset starts) of a Part 10 file open at byte 0.

    Walks the (0002,xxxx) group, which is always Explicit VR Little Endian, without pydicom.
    """
    head = fh.read(132)
    if head[128:132] != b"DICM":
        return None, 0
    ts, pos = None, 132
    while True:
        fh.seek(pos)
        raw = fh.read(8)
        if len(raw) < 8:
            return ts, pos
        group, element = struct.unpack("<HH", raw[:4])
        if group != 0x0002:
            return ts, pos
        vr = raw[4:6]
        if vr in _LONG_VRS:
            length = struct.unpack("<I", fh.read(4))[0]
            value_at = pos + 12
        else:
            length = struct.unpack("<H", raw[6:8])[0]
            value_at = pos + 8
        if element == 0x0010:
            fh.seek(value_at)
            ts = fh.read(min(length, 64)).rstrip(b"\0 ").decode("ascii", "replace")
        pos = value_at + length


def _deflated_header(path: Path):
    """The elements up to the end of group 0028 of a Deflated Explicit VR Little Endian file.

    ``None`` for any other transfer syntax. At most 16 MiB are inflated, so a 778 KB file
    declaring 20000 x 20000 pixels (800 MB inflated) is seen for what it is before pydicom
    inflates it whole.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    with open(path, "rb") as fh:
        ts, start = _file_meta_end(fh)
        if ts != _DEFLATED:
            return None
        fh.seek(start)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        buf = bytearray()
        target, exhausted = 64 * 1024, False
        while True:
            while len(buf) < target and not inflater.eof and not exhausted:
                chunk = inflater.unconsumed_tail or fh.read(64 * 1024)
                if not chunk:
                    exhausted = True
                    break
                buf += inflater.decompress(chunk, target - len(buf))
            finished = inflater.eof or exhausted
            past_0028: list[bool] = []

            def stop(tag, vr, length, _seen=past_0028) -> bool:
                _seen.append(tag >> 16 > 0x0028)
                return _seen[-1]

            stream = DicomBytesIO(bytes(buf))
            stream.is_little_endian, stream.is_implicit_VR = True, False
            try:
                ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=stop)
            except Exception:  # noqa: BLE001 - an element cut by the end of the buffer: inflate more
                ds = None
            if ds is not None and (any(past_0028) or finished):
                break
            if finished or target >= _DEFLATE_HEADER_LIMIT:
                raise InvalidHeaderError(path, f"no complete image header (group 0028) in the first {len(buf):,} "
                                               "inflated bytes of this Deflated DICOM; fix: re-copy the file, or "
                                               "re-export it uncompressed")
            target = min(4 * target, _DEFLATE_HEADER_LIMIT)
    header = ds
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = _DEFLATED
    return header


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
def _header_int(ds, keyword: str, path: Path, *, required: bool = True, default: int | None = None) -> int | None:
    """An integer header value, or :class:`InvalidHeaderError` naming the tag when it is unusable."""
    value = ds.get(keyword)
    if value is None or value == "":
        if required:
            raise InvalidHeaderError(path, f"{_tag(keyword)} is missing, so the pixel data cannot be interpreted; "
                                           "fix: re-export the file from its source")
        return default
    try:
        return int(_first(value))
    except (TypeError, ValueError) as e:
        raise InvalidHeaderError(path, f"{_tag(keyword)} is {value!r}, not an integer; fix: re-export the "
                                       "file from its source") from e


def _image_geometry(ds, path: Path, pixel_keyword: str) -> dict:
    """Check the image header; return rows, columns, frames, samples, bits_allocated, photometric.

    Raises :class:`InvalidHeaderError` for values no decoder can honour: Rows/Columns outside
    1..65535, BitsAllocated not 1 or a multiple of 8 (32 or 64 for float pixel data), BitsStored
    outside 1..BitsAllocated, PixelRepresentation not 0/1, an unknown PhotometricInterpretation,
    SamplesPerPixel that does not fit it, NumberOfFrames < 1.
    """
    fix = "fix: the header is damaged; re-export the file from its source (PACS or modality)"
    geometry = {}
    for keyword in ("Rows", "Columns"):
        n = _header_int(ds, keyword, path)
        if not 1 <= n <= 65535:
            raise InvalidHeaderError(path, f"{_tag(keyword)} is {n}, outside 1..65535; {fix}")
        geometry[keyword] = n
    frames = _header_int(ds, "NumberOfFrames", path, required=False, default=1)
    if frames < 1:
        raise InvalidHeaderError(path, f"{_tag('NumberOfFrames')} is {frames}, it must be at least 1; {fix}")
    alloc = _header_int(ds, "BitsAllocated", path)
    if pixel_keyword == "PixelData":
        if not (alloc == 1 or (alloc % 8 == 0 and 8 <= alloc <= 64)):
            raise InvalidHeaderError(path, f"{_tag('BitsAllocated')} is {alloc}, it must be 1 or a multiple of 8 "
                                           f"up to 64; {fix}")
        stored = _header_int(ds, "BitsStored", path, required=False, default=alloc)
        if not 1 <= stored <= alloc:
            raise InvalidHeaderError(path, f"{_tag('BitsStored')} is {stored}, it must be 1..{_tag('BitsAllocated')} "
                                           f"= {alloc}; {fix}")
        rep = _header_int(ds, "PixelRepresentation", path, required=False, default=0)
        if rep not in (0, 1):
            raise InvalidHeaderError(path, f"{_tag('PixelRepresentation')} is {rep}, it must be 0 (unsigned) or 1 "
                                           f"(signed); {fix}")
    else:
        want = 32 if pixel_keyword == "FloatPixelData" else 64
        if alloc != want:
            raise InvalidHeaderError(path, f"{_tag('BitsAllocated')} is {alloc} but {_tag(pixel_keyword)} holds "
                                           f"{want}-bit floats; {fix}")
    pi = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if pi not in _PHOTOMETRIC_SAMPLES:
        raise InvalidHeaderError(path, f"{_tag('PhotometricInterpretation')} is {pi!r}, not one DICOM defines "
                                       f"({', '.join(sorted(_PHOTOMETRIC_SAMPLES))}); {fix}")
    samples = _header_int(ds, "SamplesPerPixel", path, required=False, default=_PHOTOMETRIC_SAMPLES[pi])
    if samples != _PHOTOMETRIC_SAMPLES[pi]:
        raise InvalidHeaderError(path, f"{_tag('SamplesPerPixel')} is {samples} but {_tag('PhotometricInterpretation')} "
                                       f"{pi} has {_PHOTOMETRIC_SAMPLES[pi]} sample(s) per pixel; {fix}")
    geometry.update(frames=frames, samples=samples, bits_allocated=alloc, photometric=pi)
    return geometry


def _check_budget(ds, path: Path, max_pixels: int | None) -> None:
    """Rows x Columns x NumberOfFrames against ``max_pixels``, from the header alone."""
    if max_pixels is None:
        return
    rows, cols = _header_int(ds, "Rows", path), _header_int(ds, "Columns", path)
    frames = max(1, _header_int(ds, "NumberOfFrames", path, required=False, default=1))
    n = rows * cols * frames
    if n > max_pixels:
        what = f"the header declares {_tag('Rows')} {rows} x {_tag('Columns')} {cols}"
        if frames > 1:
            what += f" x {_tag('NumberOfFrames')} {frames}"
        raise _budget_error(path, n, max_pixels, what)


def _check_pixel_length(ds, path: Path, keyword: str, geometry: dict, file_size: int) -> None:
    """Compare the bytes of native (uncompressed) pixel data with what the header describes.

    pydicom only warns when there are more bytes than Rows x Columns need and returns a crop;
    here a header that disagrees with its data is an error (:class:`HeaderMismatchError`), and
    pixel data that runs past the end of the file is a truncated file (:class:`ImageDecodeError`).
    """
    from pydicom.dataelem import RawDataElement

    elem = ds.get_item(keyword, keep_deferred=True)  # a deferred element stays on disk
    if isinstance(elem, RawDataElement):
        length = elem.length
        if length == 0xFFFFFFFF:  # encapsulated (compressed) frames: the decoder checks them
            return
        if elem.value is not None:
            available = len(elem.value)
        elif elem.value_tell is not None:
            available = file_size - elem.value_tell
        else:  # pragma: no cover - pydicom always records where a deferred value is
            available = length
        if available < length:
            raise ImageDecodeError(path, f"{_tag(keyword)} declares {length:,} bytes but the file ends after "
                                         f"{max(available, 0):,} of them: the file is truncated; fix: re-copy or "
                                         "re-download it")
    else:
        value = getattr(elem, "value", None)
        if not isinstance(value, (bytes, bytearray)):
            return
        length = len(value)
    ts = str(getattr(getattr(ds, "file_meta", None), "get", lambda *_: None)("TransferSyntaxUID") or "")
    if ts and ts not in _NATIVE_SYNTAXES:
        return
    g = geometry
    samples = 2 if g["photometric"] == "YBR_FULL_422" else g["samples"]  # 4:2:2 stores 2 values per pixel
    expected = (g["Rows"] * g["Columns"] * g["frames"] * samples * g["bits_allocated"] + 7) // 8
    if length > expected + (expected % 2) and not _nonzero_tail(ds, keyword, expected):
        # zero bytes after the image are padding (PS3.5 8.1.1; pydicom's MR_small_padded.dcm), not data
        logger.info("%s: %d bytes of zero padding after the pixel data ignored", path, length - expected)
    elif length < expected or length > expected + (expected % 2):  # one pad byte to an even length is allowed
        frames = f" x {_tag('NumberOfFrames')} {g['frames']}" if g["frames"] > 1 else ""
        raise HeaderMismatchError(
            path, f"the header describes {_tag('Rows')} {g['Rows']} x {_tag('Columns')} {g['Columns']}{frames} x "
                  f"{_tag('SamplesPerPixel')} {g['samples']} x {_tag('BitsAllocated')} {g['bits_allocated']} bits "
                  f"= {expected:,} bytes, but {_tag(keyword)} holds {length:,} bytes; the header disagrees with "
                  "the pixel data, so any image read from it would be cropped or garbled; fix: re-export the "
                  "file from its source")


def _nonzero_tail(ds, keyword: str, start: int) -> bool:
    """Whether the pixel data holds any non-zero byte after its first ``start`` bytes."""
    value = ds[keyword].value  # read now; the decoder would read it next anyway
    return bool(np.frombuffer(memoryview(value)[start:], dtype=np.uint8).any())


# --------------------------------------------------------------------------- pixel steps
def _ds_float(ds, keyword: str, path: Path, default: float | None) -> float | None:
    """A finite float header value (first of several); ``default`` when absent or empty.

    A value that is present but not a finite number raises :class:`InvalidLUTError`.
    """
    value = ds.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0):
        return default
    first = _first(value)
    try:
        number = float(first)
    except (TypeError, ValueError) as e:
        raise InvalidLUTError(path, f"{_tag(keyword)} is {first!r}, not a number; fix: correct the header, or "
                                    "pass voi='minmax' / window=(center, width)") from e
    if not math.isfinite(number):
        raise InvalidLUTError(path, f"{_tag(keyword)} is {first!r}, not a finite number, so every pixel would be "
                                    "NaN or infinite; fix: correct the header, or pass voi='minmax' / "
                                    "window=(center, width)")
    return number


def _lut_table(item, ds, path: Path, sequence: str) -> tuple[np.ndarray, int, int]:
    """Validated (table, first mapped value, bits per entry) of a Modality or VOI LUT Sequence item."""
    fix = f"fix: correct or remove {_tag(sequence)} (re-export the file), or pass voi='minmax'"
    descriptor = item.get("LUTDescriptor")
    if descriptor is None:
        raise InvalidLUTError(path, f"{_tag(sequence)} item has no {_tag('LUTDescriptor')}; {fix}")
    try:
        values = [int(v) for v in descriptor]
    except (TypeError, ValueError) as e:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} {descriptor!r} is not three "
                                    f"integers; {fix}") from e
    if len(values) != 3:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} has {len(values)} value(s) "
                                    f"{values}, it must have 3 (entries, first mapped value, bits); {fix}")
    n, first, bits = values
    n = n or 65536  # PS3.3 C.11.1.1: 0 means 2**16 entries
    if not 8 <= bits <= 16:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} says {bits} bits per entry, "
                                    f"DICOM allows 8..16; {fix}")
    if "LUTData" not in item:
        raise InvalidLUTError(path, f"{_tag(sequence)} item has no {_tag('LUTData')}; {fix}")
    data = item["LUTData"]
    raw = data.value
    if isinstance(raw, (bytes, bytearray)):  # OW: 16-bit words in the file's byte order
        little = True
        fm = getattr(ds, "file_meta", None)
        ts = fm.get("TransferSyntaxUID") if fm is not None else None
        if ts is not None and str(ts) == "1.2.840.10008.1.2.2":
            little = False
        table = np.frombuffer(bytes(raw[: len(raw) // 2 * 2]), dtype="<u2" if little else ">u2")
    elif raw is None:
        table = np.zeros(0, np.int64)
    else:
        try:
            table = np.asarray(list(raw) if hasattr(raw, "__iter__") else [raw], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTData')} is not a list of integers; {fix}") from e
    if table.size < n:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} declares {n} entries but "
                                    f"{_tag('LUTData')} holds {table.size}; {fix}")
    return table[:n].astype(np.int64, copy=False), first, bits


def _lookup(x: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """``table[clip(x - first, 0, n - 1)]`` (values below ``first`` take entry 0, PS3.3 C.11)."""
    index = np.rint(x).astype(np.int64) - first if x.dtype.kind == "f" else x.astype(np.int64) - first
    np.clip(index, 0, table.size - 1, out=index)
    return table[index]


def _apply_modality(arr: np.ndarray, ds, path: Path, lo: float, hi: float) -> tuple[np.ndarray, float, float, bool]:
    """Modality LUT step: (values, their min, their max, whether a rescale/LUT ran)."""
    sequence = ds.get("ModalityLUTSequence")
    if sequence is not None and len(sequence) > 0:
        table, first, _ = _lut_table(sequence[0], ds, path, "ModalityLUTSequence")
        out = _lookup(arr, table, first)
        x_lo, x_hi = float(out.min()), float(out.max())
        if x_hi <= x_lo:
            raise ConstantImageError(path, f"{_tag('ModalityLUTSequence')} maps every stored value ({lo:g}..{hi:g}) "
                                           f"to {x_lo:g}: the image would be blank; fix: correct or remove the LUT "
                                           "(re-export the file)")
        return out.astype(np.float64), x_lo, x_hi, True
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = _ds_float(ds, "RescaleSlope", path, 1.0)
        intercept = _ds_float(ds, "RescaleIntercept", path, 0.0)
        if slope == 0.0:
            raise InvalidLUTError(path, f"{_tag('RescaleSlope')} is 0, which maps every pixel to the intercept "
                                        "(a blank image); fix: correct the header (usually 1), or re-export")
        with np.errstate(over="ignore", invalid="ignore"):
            ends = (lo * slope + intercept, hi * slope + intercept)
        if not all(math.isfinite(v) for v in ends) or not math.isfinite(ends[1] - ends[0]):
            raise InvalidLUTError(path, f"{_tag('RescaleSlope')} {slope:g} and {_tag('RescaleIntercept')} "
                                        f"{intercept:g} map the stored values {lo:g}..{hi:g} outside the range of "
                                        "floating point numbers (infinite); fix: correct the header")
        x = arr.astype(np.float64)
        if slope != 1.0:
            x *= slope
        if intercept != 0.0:
            x += intercept
        return x, min(ends), max(ends), True
    return arr.astype(np.float64), lo, hi, False


def _bits_range(ds, signed: bool) -> tuple[float, float]:
    bs = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if signed:
        return float(-(2 ** (bs - 1))), float(2 ** (bs - 1) - 1)
    return 0.0, float(2 ** bs - 1)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflow far below the centre is exactly 0
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1.0:  # LINEAR with the minimum width 1 is a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _constant_after(path: Path, what: str, x_lo: float, x_hi: float, value: float) -> ConstantImageError:
    shade = "black" if value <= 0.0 else ("white" if value >= 1.0 else f"{value:.3g}")
    return ConstantImageError(path, f"{what} maps every pixel (values {x_lo:g}..{x_hi:g} after the modality LUT) "
                                    f"to {shade}: the displayed image would be blank; fix: pass voi='minmax', or "
                                    "window=(center, width) covering the data, or correct the header")


def _apply_voi(x: np.ndarray, ds, voi: str, window, path: Path, signed: bool, modality_applied: bool,
               x_lo: float, x_hi: float) -> tuple[np.ndarray, str, tuple | None]:
    """VOI step. Returns (image in [0, 1], name of the step that ran, (center, width) or None).

    ``x_lo``/``x_hi`` are the (attained) extremes of ``x``; every VOI function but a LUT is
    monotone, so the output range, and with it a blank result, follows from them without
    another pass over the image.
    """
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
    if window is not None:
        center, width = window
        ends = _window(np.array([x_lo, x_hi]), center, width, function)
        if ends[1] <= ends[0]:
            raise _constant_after(path, f"window=({center:g}, {width:g})", x_lo, x_hi, float(ends[0]))
        return _window(x, center, width, function), "window", (center, width)

    sequence = ds.get("VOILUTSequence")
    has_lut = sequence is not None and len(sequence) > 0
    if voi in ("auto", "lut") and has_lut:
        table, first, bits = _lut_table(sequence[0], ds, path, "VOILUTSequence")
        out = _lookup(x, table, first)
        o_lo, o_hi = int(out.min()), int(out.max())
        if o_hi <= o_lo:
            raise _constant_after(path, f"{_tag('VOILUTSequence')} (every entry used is {o_lo})", x_lo, x_hi,
                                  0.0 if o_lo == 0 else 0.5)
        top = float(2 ** bits - 1)
        if o_hi > top:  # the descriptor understates the LUT's depth (seen in the wild)
            top = float(2 ** int(np.ceil(np.log2(o_hi + 1))) - 1)
        return out / top, "lut", None
    if voi == "lut":
        raise ImageReadError(path, "voi='lut' but the file has no VOI LUT Sequence; fix: use voi='auto'")

    present = [k for k in ("WindowCenter", "WindowWidth") if ds.get(k) not in (None, "")]
    if voi in ("auto", "window") and len(present) == 2:
        wc = _ds_float(ds, "WindowCenter", path, None)
        ww = _ds_float(ds, "WindowWidth", path, None)
        if ww is not None and ww <= 0:
            raise InvalidLUTError(path, f"{_tag('WindowWidth')} is {ww:g}; DICOM requires a width of at least 1; "
                                        "fix: correct the header, or pass voi='minmax' or window=(center, width)")
        if wc is not None and ww is not None:
            ends = _window(np.array([x_lo, x_hi]), wc, ww, function)
            if ends[1] <= ends[0]:
                raise _constant_after(path, f"the window {_tag('WindowCenter')} {wc:g} / {_tag('WindowWidth')} {ww:g}",
                                      x_lo, x_hi, float(ends[0]))
            return _window(x, wc, ww, function), "window", (wc, ww)
    if voi == "window":
        raise ImageReadError(path, "voi='window' but the file has no usable WindowCenter/WindowWidth; "
                                   "fix: use voi='auto' or pass window=(center, width)")
    if voi == "none":
        lo, hi = _bits_range(ds, signed)
        if modality_applied:
            slope = _ds_float(ds, "RescaleSlope", path, 1.0)
            inter = _ds_float(ds, "RescaleIntercept", path, 0.0)
            lo, hi = sorted((lo * slope + inter, hi * slope + inter))
        span = max(hi - lo, 1e-12)
        ends = np.clip((np.array([x_lo, x_hi]) - lo) / span, 0.0, 1.0)
        if ends[1] <= ends[0]:
            raise _constant_after(path, "voi='none' (the full stored range)", x_lo, x_hi, float(ends[0]))
        return np.clip((x - lo) / span, 0.0, 1.0), "none", None
    if x_hi <= x_lo:  # pragma: no cover - a constant image is refused before the modality step
        raise _constant_after(path, "voi='minmax'", x_lo, x_hi, 0.0)
    return (x - x_lo) / (x_hi - x_lo), "minmax", None


def _to_luminance(rgb: np.ndarray, top: float) -> np.ndarray:
    return (rgb[..., :3].astype(np.float64) @ _LUMA) / top


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

    from pydicom.pixels import apply_color_lut, pixel_array

    pi = geometry["photometric"]
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
        raise ImageDecodeError(path, f"pixel data could not be decoded (transfer syntax {ts}; "
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

    if arr.ndim != 2:
        raise ImageDecodeError(path, f"expected a single 2-D grayscale frame, decoded shape {arr.shape}; "
                                     "fix: pass frame= for multi-frame files")
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
    return np.clip(image, 0.0, 1.0).astype(np.float32), meta
