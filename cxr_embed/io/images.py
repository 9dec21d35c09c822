"""Any radiograph file -> float32 image ``(H, W)`` in [0, 1], air dark, bone bright.

DICOM is recognised by content (:func:`cxr_embed.io.dicom.is_dicom`), never by suffix, and read
with the full DICOM display pipeline. Everything else goes through Pillow: PNG, JPEG, TIFF (and
any other format Pillow opens), 8- and 16-bit grayscale, RGB(A)/palette collapsed to luminance,
EXIF orientation honoured.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..exceptions import ImageReadError, MultiFrameError
from .dicom import VOI_MODES, _check_file, is_dicom, read_dicom

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


def _pil_to_array(img, path: Path, int_bits: int) -> tuple[np.ndarray, int, str]:
    """Pillow image -> (float64 (H, W) in [0, 1], bit depth, how it was scaled).

    ``int_bits`` is the sample depth of an ``I``-mode image (16 for PNG, BitsPerSample for TIFF).
    """
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float64), 1, "binary"
    if mode in ("L", "LA"):
        a = np.asarray(img.getchannel("L") if mode == "LA" else img, dtype=np.float64)
        return a / 255.0, 8, "8-bit"
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        bits = 16 if mode.startswith("I;16") else int_bits
        if bits <= 16 and a.min(initial=0) >= 0 and a.max(initial=0) <= 65535:
            # 16-bit grayscale: scale by the real range of the format, not the image's max
            return a / 65535.0, 16, "16-bit/65535"
        lo, hi = float(a.min()), float(a.max())
        warnings.warn(f"{path}: {bits}-bit integer image ({mode}) scaled by its own min/max "
                      f"[{lo:g}, {hi:g}]; export 8- or 16-bit grayscale for a fixed scale",
                      UserWarning, stacklevel=3)
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)), bits, "minmax"
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo >= 0.0 and hi <= 1.0:
            return a, 32, "float"
        warnings.warn(f"{path}: floating-point image with range [{lo:g}, {hi:g}] scaled by its own "
                      "min/max", UserWarning, stacklevel=3)
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)), 32, "minmax"
    # colour (RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV ...): luminance of the RGB rendering
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    spread = float(np.max(np.ptp(rgb, axis=-1))) if rgb.size else 0.0
    if spread > _COLOR_TOLERANCE:
        warnings.warn(f"{path}: colour image ({mode}) converted to luminance (ITU-R BT.601); "
                      "a radiograph is normally grayscale, check the file", UserWarning, stacklevel=3)
    else:
        logger.debug("%s: grayscale stored as %s, taking luminance", path, mode)
    return rgb @ _LUMA, 8, "luminance"


def read_image(path: str | os.PathLike, *, voi: str = "auto", window: tuple[float, float] | None = None,
               frame: int | None = None) -> tuple[np.ndarray, dict]:
    """Read any radiograph file as float32 ``(H, W)`` in [0, 1], air dark, bone bright.

    DICOM files (recognised by content, whatever their suffix) go to
    :func:`cxr_embed.io.dicom.read_dicom`; other files are opened with Pillow:

    - 8-bit grayscale (``L``) / 255; 16-bit grayscale (``I;16``, or ``I`` from a 16-bit PNG)
      / 65535, the real range of the format, so that exposure differences survive;
    - RGB, RGBA (alpha ignored), palette, CMYK -> luminance ``0.299 R + 0.587 G + 0.114 B``
      (a warning when the channels really differ, i.e. the image is not gray stored as RGB);
    - EXIF orientation applied (``ImageOps.exif_transpose``), so rows are what a viewer shows;
    - multi-page TIFF: ``frame=`` picks the page, as for multi-frame DICOM.

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

    Returns
    -------
    image : ndarray of shape (H, W), float32
        Values in [0, 1].
    meta : dict
        For DICOM see :func:`~cxr_embed.io.dicom.read_dicom`. Otherwise ``source`` (lower-case
        Pillow format: "png", "jpeg", "tiff" ...), ``mode`` (Pillow mode of the file),
        ``bit_depth``, ``rows``, ``columns`` (after EXIF orientation), ``number_of_frames``,
        ``frame``, ``exif_transposed`` (bool), ``scaling`` (how values reached [0, 1]).

    Raises
    ------
    ImageNotFoundError
        Missing path or a directory (also a ``FileNotFoundError``).
    ImageReadError
        Empty, truncated or unrecognised file (e.g. text named ``.png``), undecodable pixels.
        DICOM subclasses: ``NoPixelDataError``, ``MultiFrameError``.
        Messages start with the path and give a fix.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> tmp = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp)
    >>> image, meta = read_image(tmp)
    >>> image.shape, float(image.max()), meta["bit_depth"]
    ((4, 6), 1.0, 16)
    """
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    path = Path(path)
    _check_file(path)
    if is_dicom(path):
        return read_dicom(path, voi=voi, window=window, frame=frame)

    from PIL import Image, ImageOps, UnidentifiedImageError

    if window is not None or voi != "auto":
        warnings.warn(f"{path}: voi=/window= apply to DICOM only and are ignored for this file",
                      UserWarning, stacklevel=2)
    from .nifti import is_nifti, read_nifti  # NIfTI by content too (io/nifti.py)

    if is_nifti(path):
        return read_nifti(path, frame=frame)
    try:
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
            mode = img.mode
            img.load()
            int_bits = (_tiff_bits(img) or 32) if fmt == "tiff" else 16  # PNG "I" is 16-bit
            transposed = _has_orientation(img)
            rotated = ImageOps.exif_transpose(img) if transposed else img
            array, bits, scaling = _pil_to_array(rotated, path, int_bits)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"not a recognised image: neither DICOM (by content) nor a format "
                                   f"Pillow can open ({e}); fix: check the file is really an image "
                                   "(PNG, JPEG, TIFF or DICOM), re-export it") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(path, f"image could not be decoded ({type(e).__name__}: {e}); the file is "
                                   "probably truncated or corrupt; fix: re-copy or re-export it") from e

    meta = {
        "source": fmt,
        "mode": mode,
        "bit_depth": bits,
        "rows": int(array.shape[0]),
        "columns": int(array.shape[1]),
        "number_of_frames": n_frames,
        "frame": int(frame) if frame is not None else None,
        "exif_transposed": bool(transposed),
        "scaling": scaling,
    }
    return np.clip(array, 0.0, 1.0).astype(np.float32), meta


def _has_orientation(img) -> bool:
    try:
        return int(img.getexif().get(0x0112, 1) or 1) != 1
    except Exception:  # noqa: BLE001 - broken EXIF is not our concern here
        return False
