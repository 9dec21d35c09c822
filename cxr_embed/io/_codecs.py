"""Decoding at a reduced resolution: JPEG 2000 resolution levels and JPEG DCT scaling.

A CNN input of 224 px needs about 1/8 of a 1955-row radiograph. JPEG 2000 stores the image as a
wavelet pyramid, and Pillow's JPEG 2000 plugin (OpenJPEG) can stop ``reduce`` levels early; JPEG
can be decoded at 1/2, 1/4 or 1/8 scale in the inverse DCT (Pillow's ``draft``, libjpeg-turbo).
Both skip most of the work, but the pixels differ slightly from decoding in full and then
resizing, so ``decode="reduced"`` is part of the preprocessing configuration (and fingerprint).

Only headers are parsed here (JPEG 2000 SIZ, COD and COC marker segments, to choose the level, and
the top-level boxes of a JP2/JPX file, to find its codestream); all decoding is Pillow's. Every
helper returns ``None`` (or level 0) when it cannot help (a signed or colour codestream, too few
levels, an unexpected mode, a header it cannot read), and the caller then decodes in full, with all
its checks: a reduced decode is an optimisation, never a different error path.
"""
from __future__ import annotations

import io
import logging
import os
import struct

import numpy as np

__all__: list[str] = []  # private module

logger = logging.getLogger(__name__)

#: DICOM transfer syntaxes whose single-frame grayscale pixel data Pillow can decode reduced.
J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
JPEG_BASELINE_SYNTAXES = ("1.2.840.10008.1.2.4.50",)
#: Start of a raw JPEG 2000 codestream (SOC, then SIZ) and the JP2 signature box (JP2 and JPX files).
J2K_START = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \x0d\x0a\x87\x0a"
_MAIN_HEADER_BYTES = 65536  # the main header markers are read up to here (SIZ, COD, COC: a few dozen bytes)
_MAX_BOXES = 64  # top-level boxes walked before a JP2 file's codestream box is given up on


def j2k_header(stream: bytes) -> dict | None:
    """``rows``, ``columns``, ``components``, ``precision``, ``signed``, ``levels`` of a raw J2K codestream.

    ``levels`` is the number of wavelet decompositions of the main header's COD segment, or the
    smallest of it and those of its COC segments (a component's own coding style). ``None`` when
    ``stream`` is not a raw codestream (SOC, SIZ) or no COD segment is found before the first tile.
    A JP2 file wrapper is not parsed here (:func:`jpeg2000_file_header` finds its codestream).

    Examples
    --------
    >>> j2k_header(b"not a codestream") is None
    True
    """
    if len(stream) < 46 or stream[:4] != J2K_START:
        return None
    try:
        lsiz = struct.unpack(">H", stream[4:6])[0]
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", stream[8:24])
        csiz = struct.unpack(">H", stream[40:42])[0]
        ssiz = stream[42]
        info = {"rows": ysiz - yo, "columns": xsiz - xo, "components": csiz,
                "precision": (ssiz & 0x7F) + 1, "signed": bool(ssiz & 0x80), "levels": None}
        cod, coc = [], []
        pos = 4 + lsiz
        while pos + 4 <= len(stream) and pos < _MAIN_HEADER_BYTES:  # main header markers up to the first tile
            marker, length = struct.unpack(">HH", stream[pos : pos + 4])
            if marker == 0xFF90 or length < 2:  # SOT (or a damaged segment: stop)
                break
            if marker == 0xFF52:  # COD: Scod, SGcod (4 bytes), then SPcod's decomposition levels
                cod.append(stream[pos + 9])
            elif marker == 0xFF53:  # COC: Ccoc (1 or 2 bytes), Scoc, then SPcoc's levels
                coc.append(stream[pos + (6 if csiz < 257 else 7)])
            pos += 2 + length
    except (struct.error, IndexError):
        return None
    if not cod:
        return None
    info["levels"] = min(cod + coc)
    return info


def jpeg2000_file_header(path: str | os.PathLike) -> dict | None:
    """:func:`j2k_header` of a plain JPEG 2000 file, its codestream found without decoding anything.

    A raw codestream (``.j2k``, ``.j2c``) starts with it; a JP2 / JPX file (``.jp2``, ``.jpx``)
    holds it in its first contiguous-codestream box (``jp2c``), found by walking the top-level boxes
    (length, type; a length of 1 announces a 64-bit length, 0 a box up to the end of the file).
    ``None`` for anything else: no JPEG 2000 signature, no ``jp2c`` box among the first
    :data:`_MAX_BOXES` (e.g. a JPX codestream split into fragments), an unreadable header.

    Examples
    --------
    >>> import tempfile, os
    >>> tmp = os.path.join(tempfile.mkdtemp(), "x.jp2")
    >>> _ = open(tmp, "wb").write(JP2_SIGNATURE + b"\\0\\0\\0\\x08free")
    >>> jpeg2000_file_header(tmp) is None
    True
    """
    with open(path, "rb") as f:
        head = f.read(_MAIN_HEADER_BYTES)
        if head[:4] == J2K_START:
            return j2k_header(head)
        if head[:12] != JP2_SIGNATURE:
            return None
        span = _jp2c_span(f, os.fstat(f.fileno()).st_size)
        if span is None:
            return None
        f.seek(span[0])
        return j2k_header(f.read(_MAIN_HEADER_BYTES))


def _jp2c_span(f, size: int) -> tuple[int, int] | None:
    """(start, end) byte offsets of the first contiguous-codestream box (``jp2c``) of a JP2/JPX stream.

    ``f`` is a seekable binary file of ``size`` bytes that starts with :data:`JP2_SIGNATURE`; only
    the top-level box headers are read. ``None`` when no ``jp2c`` box is among the first
    :data:`_MAX_BOXES` or a box length points outside the stream.
    """
    pos = 0
    for _ in range(_MAX_BOXES):
        f.seek(pos)
        box = f.read(16)
        if len(box) < 8:
            return None
        length, kind = struct.unpack(">I4s", box[:8])
        start = pos + 8
        if length == 1:  # XLBox: a 64-bit length follows the type
            if len(box) < 16:
                return None
            length, start = struct.unpack(">Q", box[8:16])[0], pos + 16
        elif length == 0:  # the last box: up to the end of the stream
            length = size - pos
        if length < start - pos or pos + length > size:
            return None
        if kind == b"jp2c":
            return start, pos + length
        if pos + length >= size:
            return None
        pos += length
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


def pillow_j2k_level(info: dict | None, needed: tuple[int, int], *, precision: int | None = None) -> int:
    """Resolution level Pillow should skip to for a codestream described by ``info`` (0: decode in full).

    The largest level whose image still covers ``needed`` (rows, cols) on both axes, among the
    levels Pillow decodes (:func:`_pillow_size_agrees`); 0 for a missing header, a colour, signed or
    more-than-16-bit codestream, or a precision other than ``precision`` (when given).

    Examples
    --------
    >>> info = {"rows": 1760, "columns": 1760, "components": 1, "precision": 10, "signed": False, "levels": 5}
    >>> pillow_j2k_level(info, (440, 440)), pillow_j2k_level(info, (441, 441)), pillow_j2k_level(None, (1, 1))
    (2, 1, 0)
    """
    if info is None or info["components"] != 1 or info["signed"] or info["precision"] > 16:
        return 0
    if precision is not None and info["precision"] != precision:
        return 0
    shape = (info["rows"], info["columns"])
    r = reduce_level(shape, needed, int(info["levels"] or 0))
    while r > 0 and not _pillow_size_agrees(shape, r):
        r -= 1
    return r


def decode_pillow_reduced(data: bytes, needed: tuple[int, int], *, precision: int | None = None):
    """Decode a JPEG 2000 codestream or a JPEG at the smallest scale covering ``needed`` (rows, cols).

    Parameters
    ----------
    data : bytes
        A raw JPEG 2000 codestream (or a JP2 file holding one) or a JPEG (JFIF) stream, grayscale.
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

    if data[:12] == JP2_SIGNATURE:  # a JP2 file where DICOM expects a raw codestream (some encoders do this)
        span = _jp2c_span(io.BytesIO(data), len(data))
        if span is None:
            return None
        data = bytes(data[span[0] : span[1]])
    if data[:4] == J2K_START:
        info = j2k_header(data)
        r = pillow_j2k_level(info, needed, precision=precision)
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
