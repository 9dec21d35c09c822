"""Read a radiograph straight into a CNN input, without full-resolution float work.

``prepare_image(read_image(path)[0], size, mode=...)`` converts every stored pixel to float64,
windows, clips and inverts it at full resolution, and only then shrinks the image 8x. Here the
same function is computed in the order that costs least, on the stored integers:

1. the display function of a grayscale DICOM (modality LUT -> VOI -> MONOCHROME1 inversion, the
   code of :mod:`cxr_embed.io.dicom` itself) is evaluated once per *stored value*, as a lookup
   table of at most ``hi - lo + 1`` entries, not once per pixel;
2. when that table is affine between two integer breakpoints and constant outside them (a
   rescale, ``minmax``, ``none`` or a LINEAR window, inverted or not: nearly every CR/DX file),
   the stored integers are only clipped to the breakpoints and scaled to fill 16 bits (integer
   passes), area-averaged to the output size, and the affine map is applied to the small image;
3. any other table (a SIGMOID window, a VOI or Modality LUT Sequence, a breakpoint between two
   stored values) is applied in one ``np.take`` pass into 16-bit integers before the resize;
4. 8-bit PNG/JPEG pixels are converted to float32 (0..255), resized, and divided by 255 on
   the small image (read_image divides first: the results differ by float rounding, < 1e-4 grey levels).

The result equals ``prepare_image(read_image(path)[0], size, mode=mode, interpolation=...)``
within 0.01 grey levels on the 0..255 scale (16-bit rounding of the integer resize); every check
and named error of :func:`~cxr_embed.io.images.read_image` applies unchanged. Colour, float and
more-than-16-bit data take the two-step path.

With ``decode="reduced"``, JPEG 2000 and JPEG data (in DICOM or plain ``.jp2``/``.j2k``/``.jpg``
files) are decoded at the smallest resolution level or DCT scale that still covers twice the
output size (:data:`REDUCED_MARGIN`, :mod:`._codecs`):
several times faster for JPEG 2000, slightly different pixels, so it is part of the preprocessing
configuration.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..exceptions import CxrEmbedError, ImageDecodeError
from ._guards import _check_file, _check_max_pixels
from .dicom import (DEFAULT_MAX_PIXELS, VOI_MODES, _check_read_arguments, _color_image, _dcmread, _decode_pixels,
                    _grayscale_steps, _stored_extremes, is_dicom)
from .images import _constant, _open_pillow, _pil_to_array, _pillow_errors, _pillow_meta
from .preprocessing import (DECODE_MODES, _check_interpolation, _check_mode, _frame, _geometry, _pil_filter,
                            _resize, _size)

__all__ = ["read_prepared"]

logger = logging.getLogger(__name__)

_AFFINE_TOLERANCE = 1e-9  # of the [0, 1] output: float64 rounding, far below a grey level
#: A reduced decode keeps at least this many decoded pixels per output pixel along each axis, so the
#: area filter still averages over every decoded level. Measured with EfficientNet-Lite0 on the real
#: files: margin 2 keeps the cosine similarity to full decoding >= 0.99 (RG1 0.9995); decoding down
#: to the output size itself (margin 1, 1/4 and 1/8 scales) gave 0.96-0.985.
REDUCED_MARGIN = 2


def read_prepared(path: str | os.PathLike, size=(224, 224), *, mode: str = "pad", interpolation: str = "area",
                  decode: str = "full", voi: str = "auto", window: tuple[float, float] | None = None,
                  frame: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Read any radiograph file directly as a CNN input ``(h, w, 3)`` float32 in [0, 255].

    The same image as ``prepare_image(read_image(path, ...)[0], size, mode=mode,
    interpolation=interpolation)`` within 0.01 grey levels (on the 0..255 scale), computed on the stored integers and on the small image instead of on float
    copies of the full-resolution one (see the module notes).

    Parameters
    ----------
    path : str or os.PathLike
        Image file (DICOM by content; else anything Pillow opens).
    size : int or tuple of int (h, w), default (224, 224)
        Output size.
    mode : {"pad", "resize", "crop"}
        Aspect-ratio handling, as in :func:`~cxr_embed.io.preprocessing.prepare_image`.
    interpolation : {"area", "bilinear"}
        Downscaling filter, as in :func:`~cxr_embed.io.preprocessing.prepare_image`.
    decode : {"full", "reduced"}
        ``"reduced"``: decode JPEG 2000 (DICOM; plain ``.j2k``/``.j2c`` codestreams and
        ``.jp2``/``.jpx`` files) and JPEG (DICOM baseline, plain files) at the smallest
        resolution level / DCT scale that still covers twice the output size; other files, and
        whatever the reduced decoder cannot do, are decoded in full.
    voi, window, frame, max_pixels
        As for :func:`~cxr_embed.io.images.read_image`.

    Returns
    -------
    image : ndarray of shape (h, w, 3), float32
        Values in [0, 255], air dark.
    meta : dict
        The metadata of :func:`~cxr_embed.io.images.read_image` (``rows``/``columns`` are the
        stored size), plus ``reduction``: the linear factor of a reduced decode (1.0 in full).

    Raises
    ------
    ImageReadError
        And its named subclasses, exactly as :func:`~cxr_embed.io.images.read_image`.
    ValueError
        Invalid ``size``, ``mode``, ``interpolation``, ``decode``, ``voi``, ``window`` or ``max_pixels``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> tmp = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1))).save(tmp)
    >>> x, meta = read_prepared(tmp, (64, 64))
    >>> x.shape, x.dtype, meta["reduction"]
    ((64, 64, 3), dtype('float32'), 1.0)
    """
    _check_mode(mode)
    _check_interpolation(interpolation)
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    size = _size(size)
    max_pixels = _check_max_pixels(max_pixels)
    path = Path(path)
    _check_file(path)
    if is_dicom(path):
        return _dicom(path, size, mode, interpolation, decode, voi, window, frame, max_pixels)
    if window is not None or voi != "auto":
        import warnings

        warnings.warn(f"{path}: voi=/window= apply to DICOM only and are ignored for this file",
                      UserWarning, stacklevel=2)
    from .nifti import is_nifti, read_nifti

    if is_nifti(path):  # rare in chest radiography: the two-step path (read, then prepare)
        from .preprocessing import prepare_image

        image, meta = read_nifti(path, frame=frame)
        return prepare_image(image, size, mode=mode, interpolation=interpolation), {**meta, "reduction": 1.0}
    return _pillow(path, size, mode, interpolation, decode, frame, max_pixels)


# ------------------------------------------------------------------------------------ DICOM
def _dicom(path, size, mode, interpolation, decode, voi, window, frame, max_pixels):
    voi, window, max_pixels = _check_read_arguments(voi, window, frame, max_pixels)
    st = _check_file(path)
    ds = _dcmread(path, max_pixels=max_pixels)
    try:
        return _dicom_pixels(ds, path, st, size, mode, interpolation, decode, voi, window, frame, max_pixels)
    except CxrEmbedError:
        raise
    except MemoryError as e:
        raise ImageDecodeError(path, "ran out of memory while decoding; fix: free memory, or lower max_pixels= "
                                     "to refuse images this large") from e
    except Exception as e:  # noqa: BLE001 - as read_dicom: never let a raw error of a damaged file out
        raise ImageDecodeError(path, f"could not be decoded ({type(e).__name__}: {e}); the file is probably "
                                     "corrupt; fix: re-copy or re-export it") from e


def _dicom_pixels(ds, path, st, size, mode, interpolation, decode, voi, window, frame, max_pixels):
    reduced_to = (lambda shape: _needed(shape, size, mode)) if decode == "reduced" else None
    arr, meta, info = _decode_pixels(ds, path, st, frame=frame, salt=None, max_pixels=max_pixels,
                                     reduced_to=reduced_to)
    meta["reduction"] = info["reduction"]
    nh, nw, top, left = _geometry((meta["rows"], meta["columns"]), size, mode)
    if info["color"]:
        image, meta = _color_image(arr, ds, path, meta, info)
        return _frame(_resize(image, nh, nw, interpolation), size, mode, top, left), meta
    lo, hi = _stored_extremes(arr, path, info["keyword"])
    # arr is this call's own fresh decode: the integer passes may overwrite it (no 2nd full-size buffer)
    small = _integer_display(arr, ds, path, meta, info, voi, window, lo, hi, (nh, nw), interpolation, scratch=True)
    if small is None:  # float or > 16-bit range: the two-step path
        image = _grayscale_steps(arr, ds, path, meta, info, voi=voi, window=window, lo=lo, hi=hi)
        small = _resize(image.astype(np.float32), nh, nw, interpolation)
    return _frame(small, size, mode, top, left), meta


def _integer_display(arr, ds, path, meta, info, voi, window, lo, hi, out_shape, interpolation, scratch=False):
    """Display steps + resize on the stored integers; float32 ``(nh, nw)`` in [0, 1], or None.

    ``scratch=True``: ``arr`` may be overwritten (it is not used afterwards).
    """
    if arr.dtype.kind not in "ui" or hi - lo > 65535:
        return None
    ilo, span = int(lo), int(hi) - int(lo)
    sequences = "ModalityLUTSequence" in ds or (window is None and voi in ("auto", "lut")
                                                 and len(ds.get("VOILUTSequence") or []) > 0)
    if sequences:
        # a LUT Sequence is not monotone: its output range must come from the values present
        # (as in the full path), so evaluate it on exactly those
        present = np.flatnonzero(np.bincount(_offset(arr, ilo).ravel(), minlength=span + 1))
        table = np.zeros(span + 1, np.float64)
        table[present] = _grayscale_steps(present + ilo, ds, path, meta, info, voi=voi, window=window, lo=lo, hi=hi)
        return _take_and_resize(table, arr, ilo, out_shape, interpolation)
    table = _grayscale_steps(np.arange(ilo, ilo + span + 1, dtype=np.int64), ds, path, meta, info,
                             voi=voi, window=window, lo=lo, hi=hi)
    segment = _clipped_affine(table)
    if segment is None:
        return _take_and_resize(table, arr, ilo, out_shape, interpolation)
    k0, k1 = segment
    n = k1 - k0
    small = _clip_scale_resize(arr, ilo + k0, ilo + k1, k0 > 0 or k1 < span, out_shape, interpolation, scratch)
    slope = (table[k1] - table[k0]) / n
    return np.clip(table[k0] + slope * (small - (ilo + k0)), 0.0, 1.0).astype(np.float32)


#: Below this many stored values between the breakpoints, the integers are multiplied up before the
#: integer resize, whose rounding (half a stored value) would otherwise exceed 0.01 grey levels.
_FINE_SPAN = 16384


def _clip_scale_resize(arr, c0: int, c1: int, clip: bool, out_shape, interpolation, scratch=False) -> np.ndarray:
    """Resize ``clip(arr, c0, c1)`` with integer arithmetic; float64 result in stored units.

    At most two passes over the full image (clip into a copy, or into ``arr`` itself when
    ``scratch``; multiply in place), none when the values need neither clipping nor more
    precision: then the stored integers are resized as they are. Writing into ``arr`` saves a
    second full-size buffer, whose first-touch page faults cost as much as the clip itself.
    """
    small_span = c1 - c0 < _FINE_SPAN
    if arr.dtype in (np.uint8, np.uint16) and c0 >= 0:
        q = max(1, 65535 // c1) if small_span else 1
        if q > 1 and (c1 - c0) * 4 < c1:  # values far from 0: shift first to gain precision
            q = 0
        if q:
            if not clip and q == 1 and arr.dtype == np.uint16:
                t = arr
            else:
                if scratch and arr.dtype == np.uint16 and arr.flags.writeable:
                    t = np.clip(arr, c0, c1, out=arr) if clip else arr
                else:
                    t = np.clip(arr, c0, c1, dtype=np.uint16) if clip else arr.astype(np.uint16)
                if q > 1:
                    np.multiply(t, q, out=t)
            return _resize_u16(t, out_shape, interpolation) / q
    # signed, 32-bit, or a narrow range far from 0: shift to 0 first, then fill 16 bits
    q = max(1, 65535 // (c1 - c0)) if small_span else 1
    t = np.clip(arr, c0, c1).astype(np.int64) - c0 if arr.dtype.kind == "i" or arr.itemsize > 2 else \
        np.subtract(np.clip(arr, c0, c1), c0, dtype=np.uint16)
    t = t.astype(np.uint16, copy=False)
    if q > 1:
        np.multiply(t, q, out=t)
    return _resize_u16(t, out_shape, interpolation) / q + c0


def _offset(arr: np.ndarray, ilo: int) -> np.ndarray:
    """``arr - ilo`` as uint16 (the caller checked that the values span at most 65535)."""
    if arr.dtype in (np.uint8, np.uint16) and ilo >= 0:
        return arr if ilo == 0 and arr.dtype == np.uint16 else np.subtract(arr, ilo, dtype=np.uint16)
    return (arr.astype(np.int64) - ilo).astype(np.uint16)


def _take_and_resize(table, arr, ilo, out_shape, interpolation):
    """One lookup pass into 16-bit integers, then the integer resize."""
    lut = np.round(np.clip(table, 0.0, 1.0) * 65535.0).astype(np.uint16)
    t = lut.take(_offset(arr, ilo))
    return (_resize_u16(t, out_shape, interpolation) / 65535.0).astype(np.float32)


def _clipped_affine(table: np.ndarray) -> tuple[int, int] | None:
    """(k0, k1) when ``table`` is constant up to k0, affine on [k0, k1] and constant from k1; else None.

    Then ``table[x] == g(clip(x, k0, k1))`` for every integer x with g affine, so clipping the
    integers and resizing them before applying g computes the same image.
    """
    n = table.size
    head = table != table[0]
    tail = table != table[-1]
    if not head.any():
        return None
    k0 = int(np.argmax(head)) - 1
    k1 = n - int(np.argmax(tail[::-1]))  # first index of the constant tail
    k1 = min(k1, n - 1)
    if k1 <= k0:
        return None
    seg = table[k0 : k1 + 1]
    line = np.linspace(seg[0], seg[-1], seg.size)
    if float(np.max(np.abs(seg - line))) > _AFFINE_TOLERANCE:
        return None
    return k0, k1


def _resize_u16(t: np.ndarray, out_shape, interpolation) -> np.ndarray:
    """Pillow resize of a uint16 image (mode I;16) to ``out_shape``; float64 result."""
    from PIL import Image

    nh, nw = out_shape
    if t.shape == (nh, nw):
        return t.astype(np.float64)
    im = Image.fromarray(np.ascontiguousarray(t))
    return np.asarray(im.resize((nw, nh), _pil_filter(interpolation)), dtype=np.float64)


# ------------------------------------------------------------------------------------ Pillow
def _needed(shape, size, mode) -> tuple[int, int]:
    """Smallest decoded size a reduced decode may give: the scaled size times :data:`REDUCED_MARGIN`."""
    nh, nw = _geometry(shape, size, mode)[:2]
    return REDUCED_MARGIN * nh, REDUCED_MARGIN * nw


def _pillow(path, size, mode, interpolation, decode, frame, max_pixels):
    def needed(shape):
        return _needed(shape, size, mode)

    with _pillow_errors(path):
        img, info = _open_pillow(path, frame, max_pixels, needed=needed if decode == "reduced" else None)
        nh, nw, top, left = _geometry(info["shape"], size, mode)
        if img.mode == "L":
            raw = np.asarray(img)  # as read_image: a damaged stream raises here
            lo, hi = int(raw.min()), int(raw.max())
            if hi <= lo:
                raise _constant(path, "L", lo)
            bits, scaling = 8, "8-bit"
            # 0..255 as float32, resized, then scaled on the small image
            small = _resize(raw.astype(np.float32), nh, nw, interpolation) * np.float32(1 / 255.0)
        else:
            array, bits, scaling = _pil_to_array(img, path, info["int_bits"])
            small = _resize(np.clip(array, 0.0, 1.0).astype(np.float32), nh, nw, interpolation)
    meta = _pillow_meta(info, info["shape"], bits, frame, scaling)
    meta["reduction"] = info["reduction"]
    return _frame(small, size, mode, top, left), meta
