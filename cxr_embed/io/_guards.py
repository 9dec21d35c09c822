"""What the image reader refuses before decoding: trust nothing read from disk.

Shared by :mod:`cxr_embed.io.dicom` and :mod:`cxr_embed.io.images`:

- only regular files are opened (``os.stat`` first: a FIFO would block forever, a device never end);
- the pixel budget (``max_pixels``) is checked from the header, also inside a Deflated DICOM, which
  is inflated only as far as its image header;
- DICOM header values must be possible (Rows, BitsAllocated, BitsStored, PhotometricInterpretation,
  SamplesPerPixel, NumberOfFrames ...) and agree with the bytes of the pixel data.

Every refusal is a named :class:`~cxr_embed.exceptions.ImageReadError` subclass whose message
starts with the path, names the DICOM tag with its number, and gives a fix.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from ..exceptions import (HeaderMismatchError, ImageAccessError, ImageDecodeError, ImageNotFoundError,
                          ImageReadError, ImageTooLargeError, InvalidHeaderError, NotRegularFileError)

__all__: list[str] = []  # private module

logger = logging.getLogger(__name__)


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


_DEFLATED = "1.2.840.10008.1.2.1.99"


_PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
                        "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3,
                        "YBR_RCT": 3, "HSV": 3, "ARGB": 4, "CMYK": 4}


# at most this much of a Deflated file is inflated to find its image header (group 0028)
_DEFLATE_HEADER_LIMIT = 16 * 2**20


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


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
              "read_image/read_dicom/extract (max_pixels=None: no limit) or --max-pixels to cxr-embed info/extract")


def _first(v):
    """First value of a possibly multi-valued element (WindowCenter may hold several)."""
    from pydicom.multival import MultiValue

    if isinstance(v, (MultiValue, list, tuple)):
        return v[0] if len(v) else None
    return v


def _int_or_none(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


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
