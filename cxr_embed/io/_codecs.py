"""Decoding at a reduced resolution: JPEG 2000 resolution levels and JPEG DCT scaling.

A CNN input of 224 px needs about 1/8 of a 1955-row radiograph. JPEG 2000 stores the image as a
wavelet pyramid, and Pillow's JPEG 2000 plugin (OpenJPEG) can stop ``reduce`` levels early; JPEG
can be decoded at 1/2, 1/4 or 1/8 scale in the inverse DCT (Pillow's ``draft``, libjpeg-turbo).
Both skip most of the work, but the pixels differ slightly from decoding in full and then
resizing, so ``decode="reduced"`` is part of the preprocessing configuration (and fingerprint).

Only headers are parsed here (JPEG 2000 SIZ and COD marker segments, to choose the level); all
decoding is Pillow's. Every helper returns ``None`` when it cannot help (a signed or colour
codestream, a JP2 wrapper, too few levels, an unexpected mode), and the caller then decodes in
full, with all its checks: a reduced decode is an optimisation, never a different error path.
"""
from __future__ import annotations

import io
import logging
import struct

import numpy as np

__all__: list[str] = []  # private module

logger = logging.getLogger(__name__)

#: DICOM transfer syntaxes whose single-frame grayscale pixel data Pillow can decode reduced.
J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
JPEG_BASELINE_SYNTAXES = ("1.2.840.10008.1.2.4.50",)


def j2k_header(stream: bytes) -> dict | None:
    """``rows``, ``columns``, ``components``, ``precision``, ``signed``, ``levels`` of a raw J2K codestream.

    ``None`` when ``stream`` is not a raw codestream (SOC, SIZ) or its COD segment is not found
    before the first tile (a JP2 file wrapper is not parsed).

    Examples
    --------
    >>> j2k_header(b"not a codestream") is None
    True
    """
    if len(stream) < 46 or stream[:4] != b"\xff\x4f\xff\x51":
        return None
    try:
        lsiz = struct.unpack(">H", stream[4:6])[0]
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", stream[8:24])
        csiz = struct.unpack(">H", stream[40:42])[0]
        ssiz = stream[42]
        info = {"rows": ysiz - yo, "columns": xsiz - xo, "components": csiz,
                "precision": (ssiz & 0x7F) + 1, "signed": bool(ssiz & 0x80), "levels": None}
        pos = 4 + lsiz
        while pos + 4 <= len(stream) and pos < 65536:  # main header markers up to the first tile (SOT)
            marker, length = struct.unpack(">HH", stream[pos : pos + 4])
            if marker == 0xFF90:
                break
            if marker == 0xFF52:  # COD: Scod, SGcod (4 bytes), then SPcod's decomposition levels
                info["levels"] = stream[pos + 9]
                return info
            pos += 2 + length
    except (struct.error, IndexError):
        return None
    return None


def reduce_level(shape: tuple[int, int], needed: tuple[int, int], levels: int) -> int:
    """Largest ``r <= levels`` with ``ceil(shape / 2**r) >= needed`` on both axes (0 when none).

    Examples
    --------
    >>> reduce_level((1955, 1841), (224, 211), 5)
    3
    >>> reduce_level((1955, 1841), (224, 211), 1)
    1
    """
    r = 0
    while r < levels and all(-(-s // 2 ** (r + 1)) >= n for s, n in zip(shape, needed)):
        r += 1
    return r


def _pillow_size_agrees(shape: tuple[int, int], r: int) -> bool:
    """Whether Pillow's size of a level-``r`` image equals OpenJPEG's.

    OpenJPEG makes a reduced image ``ceil(n / 2**r)`` wide; Pillow 10-13 expect
    ``(n + 2**(r-1)) // 2**r`` and refuse the data ("broken data stream") where the two differ
    (RG1's 1841 columns at r = 2: 461 vs 460). Such levels are skipped.

    Examples
    --------
    >>> _pillow_size_agrees((1955, 1841), 1), _pillow_size_agrees((1955, 1841), 2)
    (True, False)
    """
    power = 2**r
    return all((n + power // 2) // power == -(-n // power) for n in shape)


def decode_pillow_reduced(data: bytes, needed: tuple[int, int], *, precision: int | None = None):
    """Decode a JPEG 2000 codestream or a JPEG at the smallest scale covering ``needed`` (rows, cols).

    Parameters
    ----------
    data : bytes
        A raw JPEG 2000 codestream or a JPEG (JFIF) stream, grayscale.
    needed : tuple of int (rows, cols)
        Minimum size of the decoded image.
    precision : int, optional
        Bits per sample the caller expects (a DICOM's BitsStored); the codestream must agree.

    Returns
    -------
    (array, factor) or None
        ``array`` of shape about ``(rows / factor, cols / factor)``, uint8 or uint16 holding the
        stored values; ``None`` when a reduced decode does not apply (then decode in full).
    """
    from PIL import Image

    if data[:4] == b"\xff\x4f\xff\x51":
        info = j2k_header(data)
        if info is None or info["components"] != 1 or info["signed"] or info["precision"] > 16:
            return None
        if precision is not None and info["precision"] != precision:
            return None
        shape = (info["rows"], info["columns"])
        r = reduce_level(shape, needed, int(info["levels"] or 0))
        while r > 0 and not _pillow_size_agrees(shape, r):
            r -= 1
        if r == 0:
            return None
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG2000" or im.mode not in ("L", "I;16"):
                return None
            im.reduce = r
            im.load()
            arr = np.asarray(im)
        # Pillow scales samples up to the full 8 or 16 bits of its mode: shift back to the stored values
        shift = (8 if arr.dtype == np.uint8 else 16) - info["precision"]
        if shift > 0:
            arr = arr >> shift
        factor = 2**r
    elif data[:2] == b"\xff\xd8":
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode != "L" or (precision is not None and precision != 8):
                return None
            full = im.size
            im.draft("L", (needed[1], needed[0]))  # the largest DCT scale still >= the size asked
            if im.size == full:
                return None
            im.load()
            arr = np.asarray(im)
            factor = full[0] / im.size[0]
    else:
        return None
    if arr.ndim != 2 or arr.shape[0] < needed[0] or arr.shape[1] < needed[1]:
        return None
    return arr, factor
