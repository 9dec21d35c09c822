"""Any radiograph file -> float32 image ``(H, W)`` in [0, 1], air dark, bone bright.

DICOM is recognised by content (:func:`cxr_embed.io.dicom.is_dicom`), never by suffix, and read
with the full DICOM display pipeline. Everything else goes through Pillow: PNG, JPEG, TIFF (and
any other format Pillow opens), 8- and 16-bit grayscale, RGB(A)/palette collapsed to luminance,
EXIF orientation honoured.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..exceptions import (ConstantImageError, CxrEmbedError, ImageDecodeError, ImageReadError, ImageTooLargeError,
                          MultiFrameError, NonFiniteImageError)
from ._guards import _budget_error, _check_file, _check_max_pixels
from .dicom import DEFAULT_MAX_PIXELS, VOI_MODES, is_dicom, read_dicom

__all__ = ["read_image"]

logger = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R BT.601, as Pillow's "L"
_COLOR_TOLERANCE = 2.0 / 255.0  # channels closer than this are "gray stored as RGB"


def _tiff_bits(img) -> int | None:
    try:
        bits = img.tag_v2.get(258)  # BitsPerSample
    except AttributeError:
        return None
    if bits is None:
        return None
    if isinstance(bits, (tuple, list)):
        bits = bits[0]
    return int(bits)


def _constant(path: Path, mode: str, value) -> ConstantImageError:
    return ConstantImageError(path, f"every pixel has the value {value:g} (Pillow mode {mode}): the image is blank "
                                    "and carries no information; fix: exclude the file, or re-export the real image")


def _pil_to_array(img, path: Path, int_bits: int) -> tuple[np.ndarray, int, str]:
    """Pillow image -> (float64 (H, W) in [0, 1], bit depth, how it was scaled).

    ``int_bits`` is the sample depth of an ``I``-mode image (16 for PNG, BitsPerSample for TIFF).
    Blank (constant) images raise :class:`ConstantImageError`, NaN/inf in float images
    :class:`NonFiniteImageError`; the extremes are taken on the stored values, before the
    float conversion.
    """
    mode = img.mode
    if mode == "1":
        a = np.asarray(img)
        if a.size and a.min() == a.max():
            raise _constant(path, mode, float(a.flat[0]))
        return a.astype(np.float64), 1, "binary"
    if mode in ("L", "LA"):
        raw = np.asarray(img.getchannel("L") if mode == "LA" else img)
        lo, hi = int(raw.min()), int(raw.max())
        if hi <= lo:
            raise _constant(path, mode, lo)
        return raw.astype(np.float64) / 255.0, 8, "8-bit"
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img)
        lo, hi = float(raw.min()), float(raw.max())
        if hi <= lo:
            raise _constant(path, mode, lo)
        a = raw.astype(np.float64)
        bits = 16 if mode.startswith("I;16") else int_bits
        if bits <= 16 and lo >= 0 and hi <= 65535:
            # 16-bit grayscale: scale by the real range of the format, not the image's max
            return a / 65535.0, 16, "16-bit/65535"
        warnings.warn(f"{path}: {bits}-bit integer image ({mode}) scaled by its own min/max "
                      f"[{lo:g}, {hi:g}]; export 8- or 16-bit grayscale for a fixed scale",
                      UserWarning, stacklevel=3)
        return (a - lo) / (hi - lo), bits, "minmax"
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(a)
        if not finite.all():
            bad = int(a.size - np.count_nonzero(finite))
            raise NonFiniteImageError(path, f"{bad} of {a.size} pixels of this floating-point image are NaN or "
                                            "infinite; fix: re-export it without NaN/inf (e.g. replace them by the "
                                            "background value)")
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            raise _constant(path, mode, lo)
        if lo >= 0.0 and hi <= 1.0:
            return a, 32, "float"
        warnings.warn(f"{path}: floating-point image with range [{lo:g}, {hi:g}] scaled by its own "
                      "min/max", UserWarning, stacklevel=3)
        return (a - lo) / (hi - lo), 32, "minmax"
    # colour (RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV ...): luminance of the RGB rendering
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    spread = float(np.max(np.ptp(rgb, axis=-1))) if rgb.size else 0.0
    if spread > _COLOR_TOLERANCE:
        warnings.warn(f"{path}: colour image ({mode}) converted to luminance (ITU-R BT.601); "
                      "a radiograph is normally grayscale, check the file", UserWarning, stacklevel=3)
    else:
        logger.debug("%s: grayscale stored as %s, taking luminance", path, mode)
    luminance = rgb @ _LUMA
    if luminance.size and float(luminance.max()) <= float(luminance.min()):
        raise _constant(path, mode, float(luminance.flat[0]) * 255.0)
    return luminance, 8, "luminance"


def read_image(path: str | os.PathLike, *, voi: str = "auto", window: tuple[float, float] | None = None,
               frame: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Read any radiograph file as float32 ``(H, W)`` in [0, 1], air dark, bone bright.

    DICOM files (recognised by content, whatever their suffix) go to
    :func:`cxr_embed.io.dicom.read_dicom`; other files are opened with Pillow:

    - 8-bit grayscale (``L``) / 255; 16-bit grayscale (``I;16``, or ``I`` from a 16-bit PNG)
      / 65535, the real range of the format, so that exposure differences survive;
    - RGB, RGBA (alpha ignored), palette, CMYK -> luminance ``0.299 R + 0.587 G + 0.114 B``
      (a warning when the channels really differ, i.e. the image is not gray stored as RGB);
    - EXIF orientation applied (``ImageOps.exif_transpose``), so rows are what a viewer shows;
    - multi-page TIFF: ``frame=`` picks the page, as for multi-frame DICOM.

    Nothing that is not a regular file is opened (a FIFO would block forever), and the size the
    header declares is checked against ``max_pixels`` before anything is decoded. The result is
    never NaN, infinite or constant: such files raise a named error instead.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.
    voi : {"auto", "lut", "window", "minmax", "none"}, default "auto"
        DICOM only (see :func:`~cxr_embed.io.dicom.read_dicom`); ignored with a warning when set
        to anything but "auto" for other formats.
    window : tuple (center, width), optional
        DICOM only; explicit window in modality units. Ignored with a warning for other formats.
    frame : int, optional
        Frame (DICOM) or page (TIFF/GIF) index; required when the file has more than one.
    max_pixels : int or None, default DEFAULT_MAX_PIXELS (100 megapixels)
        Pixel budget, checked from the header before decoding (DICOM: Rows x Columns x
        NumberOfFrames; other formats: width x height of the page read). ``None``: no limit
        (Pillow's own limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS``, still applies).

    Returns
    -------
    image : ndarray of shape (H, W), float32
        Values in [0, 1], finite, not constant.
    meta : dict
        For DICOM see :func:`~cxr_embed.io.dicom.read_dicom`. Otherwise ``source`` (lower-case
        Pillow format: "png", "jpeg", "tiff" ...), ``mode`` (Pillow mode of the file),
        ``bit_depth``, ``rows``, ``columns`` (after EXIF orientation), ``number_of_frames``,
        ``frame``, ``exif_transposed`` (bool), ``scaling`` (how values reached [0, 1]).

    Raises
    ------
    ImageNotFoundError
        Missing path or a directory (also a ``FileNotFoundError``).
    NotRegularFileError, ImageAccessError
        A FIFO, socket, device or symlink loop (never opened); a file that may not be read.
    ImageTooLargeError
        More pixels than ``max_pixels`` (or than Pillow's own limit).
    ImageDecodeError
        Truncated or corrupt file, or any other failure of the decoder.
    NonFiniteImageError, ConstantImageError
        NaN/inf pixels (float TIFF, float DICOM); a blank image.
    ImageReadError
        Empty or unrecognised file (e.g. text named ``.png``); DICOM files may also raise
        ``NoPixelDataError``, ``MultiFrameError``, ``InvalidHeaderError``, ``HeaderMismatchError``,
        ``InvalidLUTError`` (see :func:`~cxr_embed.io.dicom.read_dicom`). Every message starts with
        the path and gives a fix; all are ``ValueError`` and :class:`~cxr_embed.CxrEmbedError`.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> tmp = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> ramp = np.tile(np.array([0, 21845, 43690, 65535], np.uint16), (3, 1))
    >>> Image.fromarray(ramp).save(tmp)
    >>> image, meta = read_image(tmp)
    >>> image.shape, float(image.max()), meta["bit_depth"]
    ((3, 4), 1.0, 16)
    """
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    max_pixels = _check_max_pixels(max_pixels)
    path = Path(path)
    _check_file(path)
    if is_dicom(path):
        return read_dicom(path, voi=voi, window=window, frame=frame, max_pixels=max_pixels)

    if window is not None or voi != "auto":
        warnings.warn(f"{path}: voi=/window= apply to DICOM only and are ignored for this file",
                      UserWarning, stacklevel=2)
    from .nifti import is_nifti, read_nifti  # NIfTI by content too (io/nifti.py)

    if is_nifti(path):
        return read_nifti(path, frame=frame)
    with _pillow_errors(path):
        rotated, info = _open_pillow(path, frame, max_pixels)
        array, bits, scaling = _pil_to_array(rotated, path, info["int_bits"])
    meta = _pillow_meta(info, array.shape, bits, frame, scaling)
    return np.clip(array, 0.0, 1.0).astype(np.float32), meta


def _pillow_meta(info: dict, shape, bits: int, frame, scaling: str) -> dict:
    return {
        "source": info["format"],
        "mode": info["mode"],
        "bit_depth": bits,
        "rows": int(shape[0]),
        "columns": int(shape[1]),
        "number_of_frames": info["n_frames"],
        "frame": int(frame) if frame is not None else None,
        "exif_transposed": bool(info["transposed"]),
        "scaling": scaling,
    }


@contextlib.contextmanager
def _pillow_errors(path: Path):
    """Turn whatever Pillow or numpy raise for one file into the named reading errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except CxrEmbedError:
        raise
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow accepts"
        raise ImageTooLargeError(path, f"the header declares {size}, over Pillow's own limit (2 x "
                                       f"PIL.Image.MAX_IMAGE_PIXELS = {2 * Image.MAX_IMAGE_PIXELS:,}); nothing was "
                                       "decoded (a small file declaring a huge image is a decompression bomb); fix: "
                                       "if the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS and pass a larger "
                                       "max_pixels=") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(path, f"not a recognised image: neither DICOM (by content) nor a format "
                                   f"Pillow can open ({e}); fix: check the file is really an image "
                                   "(PNG, JPEG, TIFF or DICOM), re-export it") from e
    except MemoryError as e:
        raise ImageDecodeError(path, "ran out of memory while decoding; fix: free memory, or lower max_pixels= "
                                     "to refuse images this large") from e
    except Exception as e:  # noqa: BLE001 - Pillow/numpy raise many types for damaged files; never leak them raw
        raise ImageDecodeError(path, f"image could not be decoded ({type(e).__name__}: {e}); the file is "
                                     "probably truncated or corrupt; fix: re-copy or re-export it") from e


def _open_pillow(path: Path, frame, max_pixels, *, needed=None):
    """Open, check and load one page with Pillow; EXIF orientation applied.

    ``needed``: a callable ``(rows, cols) -> (rows, cols)`` giving the smallest size the caller
    needs for the stored size; a grayscale JPEG is then decoded at the largest DCT scale that still
    covers it (Pillow's ``draft``), a grayscale JPEG 2000 file (raw codestream, JP2, JPX) at the
    smallest resolution level that still covers it (Pillow's ``reduce``; when that decode fails,
    the file is decoded again in full, whose errors decide). Returns ``(image, info)`` with
    ``format``, ``mode``, ``n_frames``, ``transposed``, ``int_bits``, ``shape`` (rows, cols of the
    full-resolution image after EXIF orientation) and ``reduction`` (1.0 when decoded in full).
    Call inside :func:`_pillow_errors`.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        fmt = (img.format or path.suffix.lstrip(".") or "unknown").lower()
        n_frames = int(getattr(img, "n_frames", 1) or 1)
        if frame is None and n_frames > 1:
            raise MultiFrameError(path, f"has {n_frames} frames/pages; fix: pass frame=<0..{n_frames - 1}>")
        if frame is not None:
            if not 0 <= int(frame) < n_frames:
                raise MultiFrameError(path, f"frame={frame} is out of range for {n_frames} frame(s); "
                                            f"fix: pass frame=<0..{n_frames - 1}>")
            img.seek(int(frame))
        width, height = img.size  # read from the header; nothing is decoded before load()
        if max_pixels is not None and width * height > max_pixels:
            raise _budget_error(path, width * height, max_pixels,
                                f"the {fmt.upper()} header declares {width} x {height}")
        mode = img.mode
        if needed is not None and fmt == "jpeg" and mode == "L":
            # the orientation may swap the axes: ask for the larger need on both
            m = max(max(needed((height, width))), max(needed((width, height))))
            img.draft("L", (m, m))
        elif needed is not None and fmt == "jpeg2000" and mode in ("L", "I;16") and n_frames == 1:
            level = _jpeg2000_level(path, (height, width), needed)
            if level and not _load_reduced(img, level, path):
                return _open_pillow(path, frame, max_pixels)
        img.load()
        transposed = _has_orientation(img)  # after load: reading EXIF first hides a PNG's bad CRC
        reduction = width / img.size[0]
        int_bits = (_tiff_bits(img) or 32) if fmt == "tiff" else 16  # PNG "I" is 16-bit
        rotated = ImageOps.exif_transpose(img) if transposed else img
        swapped = rotated.size != img.size
        shape = (width, height) if swapped else (height, width)
    return rotated, {"format": fmt, "mode": mode, "n_frames": n_frames, "transposed": transposed,
                     "int_bits": int_bits, "shape": shape, "reduction": float(reduction)}


def _jpeg2000_level(path: Path, shape: tuple[int, int], needed) -> int:
    """Resolution level to skip to for a plain JPEG 2000 file of ``shape`` (rows, cols); 0: in full.

    The header is read again from the file (:func:`._codecs.jpeg2000_file_header`) for the number of
    levels Pillow does not expose; any doubt (a header Pillow's size disagrees with, an unreadable
    box) gives 0. As for JPEG, an orientation that swaps the axes is allowed for.
    """
    from . import _codecs

    try:
        info = _codecs.jpeg2000_file_header(path)
    except (OSError, ValueError) as e:
        logger.debug("%s: JPEG 2000 header not read for a reduced decode (%s: %s)", path, type(e).__name__, e)
        return 0
    if info is None or (info["rows"], info["columns"]) != tuple(shape):
        return 0
    upright, swapped = needed(shape), needed(shape[::-1])
    return _codecs.pillow_j2k_level(info, (max(upright[0], swapped[1]), max(upright[1], swapped[0])))


def _load_reduced(img, level: int, path: Path) -> bool:
    """Decode ``img`` (Pillow JPEG 2000) skipping ``level`` resolution levels; False when that fails."""
    img.reduce = level
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - an optimisation only: the full decode, with its own errors, decides
        logger.debug("%s: reduced JPEG 2000 decode failed (%s: %s); decoding in full", path, type(e).__name__, e)
        return False
    logger.debug("%s: decoded at resolution level %d, %s", path, level, img.size)
    return True


def _has_orientation(img) -> bool:
    try:
        return int(img.getexif().get(0x0112, 1) or 1) != 1
    except Exception:  # noqa: BLE001 - broken EXIF is not our concern here
        return False
