"""NIfTI radiographs -> float32 image ``(H, W)`` in [0, 1], upright, as :func:`cxr_embed.read_image` returns.

NIfTI-1 and NIfTI-2 files (``.nii``, gzip'ed ``.nii.gz``, whatever their name) are recognised by
content: the header size (348 or 540, either byte order) and the magic ``n+1``/``ni1``
(``n+2``/``ni2``). nibabel reads them (optional extra ``nifti``).

Orientation (the display convention, documented in docs/reading.md): a radiograph is a 2-D
projection, stored as a 2-D array, a 3-D array with one singleton axis, or one slice (``frame=``)
of a 3-D stack along the file's third voxel axis. The world direction of each in-plane voxel axis
is read from the affine with :func:`nibabel.orientations.io_orientation`; the rows are the
in-plane axis closest to superior-inferior (else anterior-posterior), the columns the other one,
and both are flipped so that the index grows towards the patient's **inferior** (rows) and
**left** (columns; posterior for a lateral view): the DICOM/radiological display of a frontal
chest film (head up, the patient's right on the viewer's left), ``PatientOrientation = L\\F``.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path

import numpy as np

from ..exceptions import ImageReadError, MultiFrameError

__all__ = ["is_nifti", "read_nifti"]

logger = logging.getLogger(__name__)

_MAX_PIXELS = 1 << 28  # a single 2-D slice larger than this is refused before decoding
_MAGICS = {348: (344, (b"n+1\x00", b"ni1\x00")), 540: (4, (b"n+2\x00", b"ni2\x00"))}


def _head(path: Path, n: int = 544) -> bytes:
    with open(path, "rb") as fh:
        start = fh.read(n)
    if start[:2] == b"\x1f\x8b":  # gzip: look at the decompressed header
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        except (OSError, EOFError):
            return b""
    return start


def is_nifti(path: str | os.PathLike) -> bool:
    """Tell by content (never by name) whether ``path`` is a NIfTI-1/2 file, gzip'ed or not.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    bool
        True when the (decompressed) header starts with ``sizeof_hdr`` 348 or 540 in either byte
        order and carries the matching magic (``n+1``/``ni1`` at byte 344, ``n+2``/``ni2`` at 4).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.nii")
    >>> _ = open(p, "wb").write(b"not an image")
    >>> is_nifti(p)
    False
    """
    path = Path(path)
    if not path.is_file():
        return False
    head = _head(path)
    if len(head) < 348:
        return False
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0]
        if size in _MAGICS:
            offset, magics = _MAGICS[size]
            return len(head) >= offset + 4 and head[offset:offset + 4] in magics
    return False


def _nibabel():
    from .._utils import require

    return require("nibabel", extra="nifti")


def _upright(data: np.ndarray, affine: np.ndarray, axes: tuple[int, int], nib) -> tuple[np.ndarray, dict]:
    """Rows towards inferior (else posterior), columns towards the patient's left (else posterior)."""
    ornt = nib.orientations.io_orientation(affine)  # per voxel axis: (world axis 0=x,1=y,2=z, +1 RAS / -1)
    (a, b) = axes
    wa, wb = int(ornt[a, 0]), int(ornt[b, 0])
    arr = data
    if wa > wb:  # the axis nearer S/I (then A/P) is the rows
        row_flip, col_flip = ornt[a, 1], ornt[b, 1]
        row_world, col_world = wa, wb
    else:
        arr = arr.T
        row_flip, col_flip = ornt[b, 1], ornt[a, 1]
        row_world, col_world = wb, wa
    if row_flip > 0:  # index grows towards S (or A): flip so that it grows towards I (or P)
        arr = arr[::-1, :]
    if col_flip > 0:  # towards R (or A): flip so that it grows towards L (or P)
        arr = arr[:, ::-1]
    names = {0: "L", 1: "P", 2: "I"}
    return np.ascontiguousarray(arr), {
        "display": f"rows->{names[row_world]}, columns->{names[col_world]}",
        "axcodes": "".join(nib.orientations.aff2axcodes(affine)),
        "row_axis": a if wa > wb else b,
    }


def read_nifti(path: str | os.PathLike, *, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a NIfTI radiograph as float32 ``(H, W)`` in [0, 1], upright, air dark.

    Parameters
    ----------
    path : str or os.PathLike
        A NIfTI-1/2 file (``.nii`` or ``.nii.gz``).
    frame : int, optional
        Slice along the third voxel axis of a 3-D file whose three axes are all longer than 1
        (required then, as for multi-frame DICOM); None or 0 for a 2-D image.

    Returns
    -------
    image : ndarray of shape (H, W), float32
        Rows towards the patient's feet, columns towards the patient's left (module docstring).
        Intensities after the header's ``scl_slope``/``scl_inter``: unsigned 8-bit data / 255,
        unsigned 16-bit / 65535, floating data already in [0, 1] as they are, anything else
        min-max scaled to [0, 1] (``meta["scaling"]``); larger values are brighter (as MONOCHROME2).
    meta : dict
        ``source`` ("nifti"), ``nifti_version`` (1 or 2), ``dtype``, ``bit_depth``, ``shape``
        (as stored), ``number_of_frames``, ``frame``, ``rows``, ``columns``,
        ``pixel_spacing`` (mm, rows then columns), ``axcodes`` (the file's, e.g. ``"LPS"``),
        ``display`` (e.g. ``"rows->I, columns->L"``), ``scaling``, ``range`` (before scaling).

    Raises
    ------
    ImageReadError
        Not readable by nibabel, 4-D data, non-finite or constant pixels, a slice too large.
    MultiFrameError
        A 3-D stack without ``frame=``, or ``frame`` out of range.
    MissingDependencyError
        nibabel is not installed (``pip install 'cxr_embed[nifti]'``).

    Examples
    --------
    >>> import numpy as np, nibabel as nib, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "cxr.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.arange(12, dtype=np.uint8).reshape(3, 4), np.eye(4)), p)
    >>> image, meta = read_nifti(p)
    >>> image.shape, meta["display"]
    ((4, 3), 'rows->P, columns->L')
    """
    from .dicom import _check_file

    nib = _nibabel()
    path = Path(path)
    _check_file(path)
    try:
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))  # lazy: a slice of a 3-D stack is read alone
        else:  # recognised by content under another name: nibabel's loader goes by suffix
            data = path.read_bytes()
            raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            size = struct.unpack("<i", raw[:4])[0]
            cls = nib.Nifti2Image if size in (540, 0x1C020000) else nib.Nifti1Image  # 540 in either byte order
            img = cls.from_bytes(raw)
        shape = tuple(int(s) for s in img.shape)
        version = 2 if isinstance(img, nib.Nifti2Image) else 1
        affine = np.asarray(img.affine, dtype=float)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        on_disk = np.dtype(img.get_data_dtype())
        slope, inter = img.header.get_slope_inter()
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for broken files
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(path, f"NIfTI header could not be read ({type(e).__name__}: {e}); fix: re-export "
                                   "the file (e.g. with nibabel or dcm2niix)") from e
    dims = list(shape) + [1] * (3 - len(shape))
    if len(dims) > 3 and any(d > 1 for d in dims[3:]):
        raise ImageReadError(path, f"4-D NIfTI of shape {shape}; a radiograph is 2-D (or one slice of a 3-D "
                                   "stack); fix: save the frame you need as its own file")
    dims = dims[:3]
    long_axes = [k for k, d in enumerate(dims) if d > 1]
    if len(long_axes) == 3:
        n_frames = dims[2]
        if frame is None:
            raise MultiFrameError(path, f"is a 3-D NIfTI of shape {shape} ({n_frames} slices along its third axis); "
                                        f"fix: pass frame=<0..{n_frames - 1}>")
        axes = (0, 1)
    else:
        n_frames = 1
        if frame not in (None, 0):
            raise MultiFrameError(path, f"frame={frame} is out of range for a 2-D NIfTI; fix: drop frame=")
        # the in-plane axes are the long ones (a 1-pixel-wide image keeps one singleton beside its long axis)
        axes = tuple(long_axes) if len(long_axes) == 2 else ((0, 2) if long_axes == [2] else (0, 1))
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise MultiFrameError(path, f"frame={frame} is out of range for {n_frames} slice(s); "
                                    f"fix: pass frame=<0..{n_frames - 1}>")
    if dims[axes[0]] * dims[axes[1]] > _MAX_PIXELS:
        raise ImageReadError(path, f"slice of {dims[axes[0]]}x{dims[axes[1]]} pixels is larger than this reader "
                                   f"accepts ({_MAX_PIXELS}); fix: downsample the file")
    try:
        index = [slice(None)] * len(shape)
        for k in range(len(shape)):
            if k not in axes:
                index[k] = int(frame) if (k == 2 and n_frames > 1) else 0
        data = np.asarray(img.dataobj[tuple(index)], dtype=np.float64)
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(path, f"NIfTI pixel data could not be decoded ({type(e).__name__}: {e}); the file is "
                                   "probably truncated; fix: re-copy or re-export it") from e
    data = data.reshape(dims[axes[0]], dims[axes[1]])
    if not np.all(np.isfinite(data)):
        raise ImageReadError(path, f"{int(np.sum(~np.isfinite(data)))} pixels are NaN or infinite; fix: re-export "
                                   "the image with finite values")
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        raise ImageReadError(path, f"every pixel has the value {lo:g}: this is not an image; fix: check the export")
    unscaled = (slope is None or slope == 1.0) and not inter
    if unscaled and on_disk == np.uint8:
        array, bits, scaling = data / 255.0, 8, "8-bit"
    elif unscaled and on_disk == np.uint16:
        array, bits, scaling = data / 65535.0, 16, "16-bit/65535"
    elif on_disk.kind == "f" and lo >= 0.0 and hi <= 1.0:
        array, bits, scaling = data, on_disk.itemsize * 8, "float"
    else:
        logger.info("%s: NIfTI values [%g, %g] scaled by their own min/max", path, lo, hi)
        array, bits, scaling = (data - lo) / (hi - lo), on_disk.itemsize * 8, "minmax"
    array, orient = _upright(array, affine, axes, nib)
    spacing = dict(enumerate(zooms + (1.0,) * (3 - len(zooms))))
    rows_axis = orient["row_axis"]
    cols_axis = axes[1] if rows_axis == axes[0] else axes[0]
    meta = {
        "source": "nifti",
        "nifti_version": version,
        "dtype": str(on_disk),
        "bit_depth": bits,
        "shape": shape,
        "number_of_frames": n_frames,
        "frame": int(frame) if frame is not None else None,
        "rows": int(array.shape[0]),
        "columns": int(array.shape[1]),
        "pixel_spacing": (spacing[rows_axis], spacing[cols_axis]),
        "axcodes": orient["axcodes"],
        "display": orient["display"],
        "scaling": scaling,
        "range": (lo, hi),
    }
    return np.clip(array, 0.0, 1.0).astype(np.float32), meta

