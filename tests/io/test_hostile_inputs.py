"""Hostile inputs for the image reader and for ``extract`` (issue 10, reading part).

A corpus of bad files is GENERATED here (pydicom for DICOM, Pillow/numpy or hand-written bytes for
PNG/JPEG/TIFF, os.mkfifo/socket/symlink for things that are not files) in ``tmp_path``. For each
case the test asserts the exact exception class, that the message names the file, and that the
error is a :class:`cxr_embed.CxrEmbedError` (never a bare built-in). ``extract`` over a folder where
every bad file sits between good ones must report each bad one, store nothing for it, keep the good
rows equal to extracting the good ones alone, and resume. The same corpus is tabulated in
docs/errors.md.
"""
from __future__ import annotations

import io
import os
import socket
import stat
import struct
import threading
import time
import tracemalloc
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import config as dicom_config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit,
                         SecondaryCaptureImageStorage, generate_uid)

import cxr_embed
from cxr_embed.exceptions import (ConstantImageError, CxrEmbedError, HeaderMismatchError, ImageAccessError,
                                  ImageDecodeError, ImageNotFoundError, ImageReadError, ImageTooLargeError,
                                  InvalidHeaderError, InvalidLUTError, MultiFrameError, NoPixelDataError,
                                  NonFiniteImageError, NotRegularFileError)
from cxr_embed.io.dicom import DEFAULT_MAX_PIXELS, read_dicom
from cxr_embed.io.images import read_image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Case:
    """One hostile file: what it is, where it is, what ``read_image`` must raise."""

    name: str
    path: Path
    exc: type
    kwargs: dict = field(default_factory=dict)
    tag: str | None = None  # DICOM keyword the message must name (with its (gggg,eeee))


# ----------------------------------------------------------------------------- DICOM writers
def _ramp(h=32, w=32, top=4095, dtype=np.uint16) -> np.ndarray:
    a = np.linspace(0, top, h * w).reshape(h, w)
    return np.round(a).astype(dtype)


def _dataset(ts=ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    return ds


def _dcm(path: Path, pixels: np.ndarray | None = None, *, bits_stored: int | None = None,
         photometric: str = "MONOCHROME2", rows: int | None = None, columns: int | None = None,
         ts=ExplicitVRLittleEndian, pixel_bytes: bytes | None = None, drop=(), raw=(), **tags) -> Path:
    """Write a DICOM. ``pixels`` integer -> PixelData; float32/float64 -> (Double)FloatPixelData.

    ``rows``/``columns`` override the header (to make it lie), ``pixel_bytes`` the data,
    ``drop`` removes elements, ``raw`` adds ``(tag, VR, value)`` elements as given.
    """
    ds = _dataset(ts)
    pixels = _ramp() if pixels is None else np.asarray(pixels)
    h, w = pixels.shape[:2]
    ds.Rows, ds.Columns = int(rows if rows is not None else h), int(columns if columns is not None else w)
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    data = pixel_bytes if pixel_bytes is not None else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    if pixels.dtype.kind == "f":
        keyword = "FloatPixelData" if pixels.dtype.itemsize == 4 else "DoubleFloatPixelData"
        setattr(ds, keyword, data)
    else:
        ds.BitsStored = bits_stored or pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.add_new(0x7FE00010, "OW", data)  # PixelData, VR given: BitsAllocated may be dropped
    for key, value in tags.items():
        setattr(ds, key, value)
    for tag, vr, value in raw:
        ds.add_new(tag, vr, value)
    for key in drop:
        delattr(ds, key)
    encoding = {} if ts in pydicom.uid.AllTransferSyntaxes else {"implicit_vr": False, "little_endian": True}
    with dicom_config.disable_value_validation():
        ds.save_as(path, enforce_file_format=True, **encoding)
    return path


def _lut_item(descriptor, data, vr="US") -> Dataset:
    item = Dataset()
    if descriptor is not None:
        item.add_new(0x00283002, "US", descriptor)  # LUTDescriptor
    if data is not None:
        item.add_new(0x00283006, vr, data)  # LUTData
    return item


def _deflated_bomb(path: Path, rows: int = 20000, columns: int = 20000) -> Path:
    """A Deflated Explicit VR Little Endian DICOM whose 16-bit pixel data inflates to rows*columns*2 bytes.

    The deflate stream repeats one compressed block of zeros (full flushes make the blocks
    identical), so a 20000x20000 image (800 MB inflated) costs ~0.1 s to write and < 1 MB on disk.
    """
    ds = _dataset(DeflatedExplicitVRLittleEndian)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n_bytes = rows * columns * 2
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = 8_000_000
    assert n_bytes % chunk == 0
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + meta.getvalue() + first)
        for _ in range(n_bytes // chunk):
            fh.write(block)
        fh.write(comp.flush())
    return path


# ----------------------------------------------------------------------------- other formats
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height (8-bit gray) with one tiny IDAT: Pillow reads the size lazily."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))  # first row only; never decoded when the budget works
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def _tiff_header_only(path: Path, width: int, height: int) -> Path:
    """A little-endian baseline TIFF (8-bit gray, one strip) declaring width x height, 16 bytes of data."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3
                                                        else struct.pack("<I", value))
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(range(16)))
    return path


def _jpeg_with_size(path: Path, width: int, height: int) -> Path:
    """A small valid JPEG whose SOF0 height/width are patched to the given (lying) size."""
    buf = io.BytesIO()
    Image.fromarray(_ramp(16, 16, 255, np.uint8), mode="L").save(buf, format="JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def _unblock_fifos_after(fifos: list[Path], seconds: float) -> threading.Thread:
    """Safety net: if a reader wrongly opens a FIFO, open its write end after ``seconds`` so it
    gets EOF instead of hanging the test run (the case then fails on its exception class)."""

    def rescue():
        time.sleep(seconds)
        for fifo in fifos:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader blocked on it: nothing to rescue
                continue
            os.close(fd)

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    return thread


# ----------------------------------------------------------------------------- the corpus
def build_corpus(folder: Path) -> list[Case]:
    """Write every hostile file into ``folder``; return the cases (name, path, expected exception)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name, path, exc, tag=None, **kwargs):
        cases.append(Case(name, Path(path), exc, kwargs, tag))

    def d(name):
        return folder / f"{name}.dcm"

    good = _ramp()
    nan_img = good.astype(np.float32)
    nan_img[3, 4] = np.nan
    pinf = good.astype(np.float32)
    pinf[0, 0] = np.inf
    ninf = good.astype(np.float32)
    ninf[5, 5] = -np.inf
    dnan = good.astype(np.float64)
    dnan[7, 7] = np.nan

    # --- silent wrong pixels: non-finite values, bad rescale / window, constant images
    add("float_dicom_nan", _dcm(d("float_dicom_nan"), nan_img), NonFiniteImageError, "FloatPixelData")
    add("float_dicom_posinf", _dcm(d("float_dicom_posinf"), pinf), NonFiniteImageError, "FloatPixelData")
    add("float_dicom_neginf", _dcm(d("float_dicom_neginf"), ninf), NonFiniteImageError, "FloatPixelData")
    add("double_float_dicom_nan", _dcm(d("double_float_dicom_nan"), dnan), NonFiniteImageError,
        "DoubleFloatPixelData")
    for name, slope in [("rescale_slope_nan", "NaN"), ("rescale_slope_zero", "0"), ("rescale_slope_inf", "inf"),
                        ("rescale_slope_1e308", "1e308")]:
        add(name, _dcm(d(name), good, bits_stored=12, raw=[(0x00281053, "DS", slope), (0x00281052, "DS", "0")]),
            InvalidLUTError, "RescaleSlope")
    add("rescale_intercept_inf", _dcm(d("rescale_intercept_inf"), good, bits_stored=12,
                                      raw=[(0x00281053, "DS", "1"), (0x00281052, "DS", "-inf")]),
        InvalidLUTError, "RescaleIntercept")
    add("window_center_nan", _dcm(d("window_center_nan"), good, bits_stored=12,
                                  raw=[(0x00281050, "DS", "NaN"), (0x00281051, "DS", "400")]),
        InvalidLUTError, "WindowCenter")
    add("window_width_inf", _dcm(d("window_width_inf"), good, bits_stored=12,
                                 raw=[(0x00281050, "DS", "2000"), (0x00281051, "DS", "inf")]),
        InvalidLUTError, "WindowWidth")
    add("window_width_zero", _dcm(d("window_width_zero"), good, bits_stored=12, WindowCenter=2000, WindowWidth=0),
        InvalidLUTError, "WindowWidth")
    add("window_width_negative", _dcm(d("window_width_negative"), good, bits_stored=12, WindowCenter=2000,
                                      WindowWidth=-300), InvalidLUTError, "WindowWidth")
    add("constant_dicom", _dcm(d("constant_dicom"), np.full((32, 32), 1000, np.uint16), bits_stored=12),
        ConstantImageError, "PixelData")
    add("constant_float_dicom", _dcm(d("constant_float_dicom"), np.full((32, 32), 0.5, np.float32)),
        ConstantImageError, "FloatPixelData")
    add("constant_monochrome1", _dcm(d("constant_monochrome1"), np.zeros((32, 32), np.uint16), bits_stored=12,
                                     photometric="MONOCHROME1"), ConstantImageError, "PixelData")
    add("constant_after_window", _dcm(d("constant_after_window"), good, bits_stored=12, WindowCenter=60000,
                                      WindowWidth=100), ConstantImageError, "WindowCenter")
    flat_lut = _lut_item([4096, 0, 16], [30000] * 4096)
    add("constant_after_voi_lut", _dcm(d("constant_after_voi_lut"), good, bits_stored=12,
                                       VOILUTSequence=Sequence([flat_lut])), ConstantImageError, "VOILUTSequence")
    add("constant_after_modality_lut", _dcm(d("constant_after_modality_lut"), good, bits_stored=12,
                                            ModalityLUTSequence=Sequence([_lut_item([4096, 0, 16], [7] * 4096)])),
        ConstantImageError, "ModalityLUTSequence")
    big = _ramp(128, 128)
    add("rows_smaller_than_data", _dcm(d("rows_smaller_than_data"), big, bits_stored=12, rows=32),
        HeaderMismatchError, "Rows")
    add("columns_smaller_than_data", _dcm(d("columns_smaller_than_data"), big, bits_stored=12, columns=100),
        HeaderMismatchError, "Columns")
    add("rows_larger_than_data", _dcm(d("rows_larger_than_data"), big, bits_stored=12, rows=256),
        HeaderMismatchError, "Rows")
    add("bits_allocated_8_with_16bit_data", _dcm(d("bits_allocated_8_with_16bit_data"), good, BitsAllocated=8,
                                                 BitsStored=8, HighBit=7), HeaderMismatchError, "BitsAllocated")
    add("rgb_header_gray_data", _dcm(d("rgb_header_gray_data"), _ramp(32, 32, 255, np.uint8), photometric="RGB",
                                     SamplesPerPixel=3, PlanarConfiguration=0), HeaderMismatchError,
        "SamplesPerPixel")
    add("float_dicom_rows_smaller", _dcm(d("float_dicom_rows_smaller"), big.astype(np.float32), rows=32),
        HeaderMismatchError, "Rows")

    # --- malformed LUTs
    for name, item in [
        ("voi_lut_descriptor_2_values", _lut_item([4096, 0], list(range(4096)))),
        ("voi_lut_empty_data", _lut_item([4096, 0, 16], [])),
        ("voi_lut_zero_entries", _lut_item([0, 0, 16], [5, 6, 7])),
        ("voi_lut_data_shorter_than_descriptor", _lut_item([4096, 0, 16], list(range(100)))),
        ("voi_lut_bits_40", _lut_item([4096, 0, 40], list(range(4096)))),
        ("voi_lut_no_descriptor", _lut_item(None, list(range(4096)))),
        ("voi_lut_no_data", _lut_item([4096, 0, 16], None)),
        ("voi_lut_ow_too_short", _lut_item([4096, 0, 16], b"\x01\x00" * 10, vr="OW")),
    ]:
        add(name, _dcm(d(name), good, bits_stored=12, VOILUTSequence=Sequence([item])), InvalidLUTError,
            "VOILUTSequence")
    add("voi_lut_empty_item", _dcm(d("voi_lut_empty_item"), good, bits_stored=12,
                                   VOILUTSequence=Sequence([Dataset()])), InvalidLUTError, "VOILUTSequence")
    for name, item in [
        ("modality_lut_descriptor_2_values", _lut_item([4096, 0], list(range(4096)))),
        ("modality_lut_empty_data", _lut_item([4096, 0, 16], [])),
        ("modality_lut_data_shorter", _lut_item([4096, 0, 16], list(range(10)))),
        ("modality_lut_bits_3", _lut_item([4096, 0, 3], list(range(4096)))),
    ]:
        add(name, _dcm(d(name), good, bits_stored=12, ModalityLUTSequence=Sequence([item])), InvalidLUTError,
            "ModalityLUTSequence")

    # --- impossible headers
    add("bits_stored_gt_allocated", _dcm(d("bits_stored_gt_allocated"), good, BitsStored=20, HighBit=19),
        InvalidHeaderError, "BitsStored")
    add("bits_allocated_12", _dcm(d("bits_allocated_12"), good, BitsAllocated=12, BitsStored=12),
        InvalidHeaderError, "BitsAllocated")
    add("bits_stored_zero", _dcm(d("bits_stored_zero"), good, BitsStored=0, HighBit=0), InvalidHeaderError,
        "BitsStored")
    add("photometric_unknown", _dcm(d("photometric_unknown"), good, bits_stored=12, photometric="MONOCHROME3"),
        InvalidHeaderError, "PhotometricInterpretation")
    add("samples_per_pixel_3_gray", _dcm(d("samples_per_pixel_3_gray"), good, bits_stored=12, SamplesPerPixel=3),
        InvalidHeaderError, "SamplesPerPixel")
    add("samples_per_pixel_zero", _dcm(d("samples_per_pixel_zero"), good, bits_stored=12, SamplesPerPixel=0),
        InvalidHeaderError, "SamplesPerPixel")
    add("rows_zero", _dcm(d("rows_zero"), good, bits_stored=12, rows=0), InvalidHeaderError, "Rows")
    add("rows_negative", _dcm(d("rows_negative"), good, bits_stored=12, drop=("Rows",),
                              raw=[(0x00280010, "SS", -32)]), InvalidHeaderError, "Rows")
    add("rows_missing", _dcm(d("rows_missing"), good, bits_stored=12, drop=("Rows",)), InvalidHeaderError, "Rows")
    add("bits_allocated_missing", _dcm(d("bits_allocated_missing"), good, bits_stored=12, drop=("BitsAllocated",)),
        InvalidHeaderError, "BitsAllocated")
    add("number_of_frames_zero", _dcm(d("number_of_frames_zero"), good, bits_stored=12, NumberOfFrames=0),
        InvalidHeaderError, "NumberOfFrames")
    add("pixel_representation_2", _dcm(d("pixel_representation_2"), good, bits_stored=12, PixelRepresentation=2),
        InvalidHeaderError, "PixelRepresentation")

    # --- pixel budget (checked from the header, before decoding)
    add("deflated_20000x20000", _deflated_bomb(d("deflated_20000x20000")), ImageTooLargeError, "Rows")
    add("header_65535x65535", _dcm(d("header_65535x65535"), good, bits_stored=12, rows=65535, columns=65535),
        ImageTooLargeError, "Rows")
    add("multiframe_30x2000x2000", _dcm(d("multiframe_30x2000x2000"), good, bits_stored=12, rows=2000,
                                        columns=2000, NumberOfFrames=30), ImageTooLargeError, "NumberOfFrames",
        frame=0)
    add("dicom_over_small_budget", _dcm(d("dicom_over_small_budget"), good, bits_stored=12), ImageTooLargeError,
        "Rows", max_pixels=1000)
    add("png_12000x12000", _png_header_only(folder / "png_12000x12000.png", 12000, 12000), ImageTooLargeError)
    add("png_40000x40000", _png_header_only(folder / "png_40000x40000.png", 40000, 40000), ImageTooLargeError)
    add("tiff_15000x15000", _tiff_header_only(folder / "tiff_15000x15000.tif", 15000, 15000), ImageTooLargeError)
    add("jpeg_11000x11000", _jpeg_with_size(folder / "jpeg_11000x11000.jpg", 11000, 11000), ImageTooLargeError)
    add("jpeg_60000x60000", _jpeg_with_size(folder / "jpeg_60000x60000.jpg", 60000, 60000), ImageTooLargeError)
    Image.fromarray(_ramp(64, 64, 255, np.uint8), mode="L").save(folder / "png_over_small_budget.png")
    add("png_over_small_budget", folder / "png_over_small_budget.png", ImageTooLargeError, max_pixels=1000)

    # --- not regular files
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    add("fifo", fifo, NotRegularFileError)
    sock_path = folder / "socket.dcm"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    sock.close()  # the socket file stays on disk
    add("unix_socket", sock_path, NotRegularFileError)
    os.symlink("/dev/null", folder / "devnull.png")
    add("symlink_to_char_device", folder / "devnull.png", NotRegularFileError)
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    add("symlink_loop", folder / "loop_a.png", NotRegularFileError)
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    add("dangling_symlink", folder / "dangling.png", ImageNotFoundError)
    (folder / "a_directory.png").mkdir()
    add("directory", folder / "a_directory.png", ImageNotFoundError)
    add("missing", folder / "missing.dcm", ImageNotFoundError)
    add("path_with_nul_byte", folder / "bad\0name.png", ImageNotFoundError)
    (folder / "plain.txt").write_text("x")
    add("file_as_parent_directory", folder / "plain.txt" / "x.png", ImageNotFoundError)
    if not IS_ROOT:  # root reads anything
        locked = folder / "unreadable.png"
        Image.fromarray(_ramp(8, 8, 255, np.uint8), mode="L").save(locked)
        locked.chmod(0)
        add("unreadable_permissions", locked, ImageAccessError)

    # --- empty, truncated, corrupt
    (folder / "empty.dcm").write_bytes(b"")
    add("empty_dcm", folder / "empty.dcm", ImageReadError)
    (folder / "empty.png").write_bytes(b"")
    add("empty_png", folder / "empty.png", ImageReadError)
    full = _dcm(folder / "full.tmp", _ramp(64, 64), bits_stored=12).read_bytes()
    (folder / "full.tmp").unlink()
    (folder / "truncated_header.dcm").write_bytes(full[:200])
    add("dicom_truncated_in_header", folder / "truncated_header.dcm", ImageDecodeError)
    (folder / "truncated_pixels.dcm").write_bytes(full[:-3000])
    add("dicom_truncated_in_pixels", folder / "truncated_pixels.dcm", ImageDecodeError)
    (folder / "preamble_only.dcm").write_bytes(b"\0" * 128 + b"DICM\x02\x00")
    add("dicom_preamble_only", folder / "preamble_only.dcm", ImageDecodeError)
    garbage = _dcm(d("jpeg_syntax_garbage"), good, bits_stored=12, ts=JPEGBaseline8Bit,
                   pixel_bytes=encapsulate([b"\xff\xd8 not a jpeg stream \xff\xd9"]))
    add("jpeg_syntax_garbage_fragment", garbage, ImageDecodeError)
    rle = Path(get_testdata_file("MR_small_RLE.dcm", download=False)).read_bytes()
    fragment = next(f for f in generate_fragments(pydicom.dcmread(io.BytesIO(rle)).PixelData)
                    if len(f) > 64)
    second_segment = struct.unpack("<16I", fragment[:64])[2]
    overrun = bytearray(rle)
    overrun[rle.find(fragment) + second_segment] = 0x7F  # a 128-byte literal run past the segment's end
    (folder / "rle_segment_overrun.dcm").write_bytes(bytes(overrun))
    add("rle_segment_overrun_panics_decoder", folder / "rle_segment_overrun.dcm", ImageDecodeError)  # pyo3 panic
    add("unknown_transfer_syntax", _dcm(d("unknown_transfer_syntax"), good, bits_stored=12, ts="1.2.3.4.5.6"),
        ImageDecodeError)
    add("dicom_header_without_pixel_data", _dcm(d("dicom_header_without_pixel_data"), good, drop=("PixelData",),
                                                bits_stored=12), ImageDecodeError)  # cut before its pixels
    add("dicom_no_pixel_data", _dcm(d("dicom_no_pixel_data"), good, bits_stored=12, drop=(
        "PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "SamplesPerPixel", "PhotometricInterpretation")), NoPixelDataError)  # e.g. a structured report
    frames = np.stack([_ramp(8, 8)] * 3)
    mf = _dcm(d("multiframe"), frames[0], bits_stored=12, NumberOfFrames=3, pixel_bytes=frames.tobytes())
    add("multiframe_without_frame", mf, MultiFrameError)
    add("multiframe_frame_out_of_range", mf, MultiFrameError, frame=7)

    png = io.BytesIO()
    Image.fromarray(_ramp(64, 64, 255, np.uint8), mode="L").save(png, format="PNG")
    png = png.getvalue()
    (folder / "png_truncated.png").write_bytes(png[: len(png) // 2])
    add("png_truncated", folder / "png_truncated.png", ImageDecodeError)
    bad_crc = bytearray(png)
    idat = bad_crc.index(b"IDAT")
    bad_crc[idat + 6] ^= 0xFF  # flip a byte of compressed data: the chunk CRC no longer matches
    (folder / "png_bad_crc.png").write_bytes(bytes(bad_crc))
    add("png_bad_crc", folder / "png_bad_crc.png", ImageDecodeError)
    bomb_text = zlib.compress(b"A" * (20 * 2**20))
    with open(folder / "png_text_bomb.png", "wb") as fh:
        fh.write(png[:33] + _png_chunk(b"zTXt", b"Comment\0\0" + bomb_text) + png[33:])
    add("png_ztxt_bomb", folder / "png_text_bomb.png", ImageDecodeError)
    _png_header_only(folder / "png_zero_width.png", 0, 10)
    add("png_zero_width", folder / "png_zero_width.png", ImageReadError)  # Pillow cannot identify it

    jpg = io.BytesIO()
    Image.fromarray(_ramp(64, 64, 255, np.uint8), mode="L").save(jpg, format="JPEG", quality=90)
    jpg = jpg.getvalue()
    (folder / "jpeg_truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    add("jpeg_truncated", folder / "jpeg_truncated.jpg", ImageDecodeError)
    (folder / "jpeg_header_only.jpg").write_bytes(jpg[:200])
    add("jpeg_header_only", folder / "jpeg_header_only.jpg", ImageDecodeError)
    tif = io.BytesIO()
    Image.fromarray(_ramp(64, 64)).save(tif, format="TIFF")
    tif = tif.getvalue()
    (folder / "tiff_truncated.tif").write_bytes(tif[:300])
    add("tiff_truncated", folder / "tiff_truncated.tif", ImageDecodeError)

    (folder / "notes.png").write_text("this is a text file, not an image\n" * 10)
    add("text_named_png", folder / "notes.png", ImageReadError)
    (folder / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    add("random_bytes_dcm", folder / "random.dcm", ImageReadError)

    # --- non-finite or constant images in other formats
    nan_tif = _ramp(16, 16).astype(np.float32)
    nan_tif[2, 2] = np.nan
    Image.fromarray(nan_tif, mode="F").save(folder / "float_nan.tif")
    add("float_tiff_nan", folder / "float_nan.tif", NonFiniteImageError)
    inf_tif = _ramp(16, 16).astype(np.float32)
    inf_tif[0, 0] = np.inf
    Image.fromarray(inf_tif, mode="F").save(folder / "float_inf.tif")
    add("float_tiff_inf", folder / "float_inf.tif", NonFiniteImageError)
    Image.fromarray(np.full((16, 16), 0.25, np.float32), mode="F").save(folder / "float_constant.tif")
    add("float_tiff_constant", folder / "float_constant.tif", ConstantImageError)
    Image.fromarray(np.full((32, 32), 3000, np.uint16)).save(folder / "png16_constant.png")
    add("png16_constant", folder / "png16_constant.png", ConstantImageError)
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(folder / "png8_black.png")
    add("png8_all_black", folder / "png8_black.png", ConstantImageError)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8), mode="RGB").save(folder / "rgb_constant.png")
    add("rgb_constant", folder / "rgb_constant.png", ConstantImageError)
    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(folder / "jpeg_constant.jpg", quality=95)
    add("jpeg_constant", folder / "jpeg_constant.jpg", ConstantImageError)
    return cases


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we write on purpose
        return build_corpus(tmp_path_factory.mktemp("hostile"))


def _ids(cases):
    return [c.name for c in cases]


# ----------------------------------------------------------------------------- reading
def test_corpus_is_big_enough(corpus):
    assert len(corpus) >= 90
    assert len({c.name for c in corpus}) == len(corpus)
    assert len({c.exc for c in corpus}) >= 12  # every family of failure is represented


def _read_case(case: Case):
    if os.path.lexists(case.path) and stat.S_ISFIFO(os.lstat(case.path).st_mode):
        _unblock_fifos_after([case.path], 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(case.path, **case.kwargs)


def test_every_hostile_file_raises_its_named_error(corpus):
    """Each case: the exact class, the file named, a CxrEmbedError; collected so one run shows all."""
    problems = []
    for case in corpus:
        try:
            _read_case(case)
        except Exception as e:  # noqa: BLE001 - the point is to see exactly what came out
            message = str(e)
            if type(e) is not case.exc:
                problems.append(f"{case.name}: expected {case.exc.__name__}, got {type(e).__name__}: {message[:300]}")
            elif not isinstance(e, CxrEmbedError):
                problems.append(f"{case.name}: {type(e).__name__} is not a CxrEmbedError")
            elif str(case.path) not in message:
                problems.append(f"{case.name}: the message does not name the file: {message[:300]}")
            elif case.tag is not None and (case.tag not in message or not _tag_number(case.tag) in message):
                problems.append(f"{case.name}: the message does not name {case.tag} {_tag_number(case.tag)}: "
                                f"{message[:300]}")
            elif "fix" not in message:
                problems.append(f"{case.name}: the message gives no fix: {message[:300]}")
        else:
            problems.append(f"{case.name}: read without error, expected {case.exc.__name__}")
    assert not problems, "\n".join(problems)


def _tag_number(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def test_errors_are_value_errors_and_picklable(corpus):
    import pickle

    for case in corpus[:10]:
        with pytest.raises(ImageReadError) as info:
            _read_case(case)
        assert isinstance(info.value, ValueError)
        again = pickle.loads(pickle.dumps(info.value))
        assert type(again) is type(info.value) and str(again) == str(info.value)


def test_read_dicom_raises_the_same_for_dicom_cases(corpus):
    for case in corpus:
        if case.path.suffix != ".dcm" or case.exc in (NotRegularFileError,) or not case.path.is_file():
            continue
        if case.exc is ImageReadError:  # not DICOM at all: read_dicom says so
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(case.exc):
                read_dicom(case.path, **case.kwargs)


def test_deflated_bomb_is_refused_cheaply(corpus):
    case = next(c for c in corpus if c.name == "deflated_20000x20000")
    assert case.path.stat().st_size < 2 * 2**20
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError, match="20000") as info:
            read_image(case.path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB: the pixel data was inflated before the budget check"
    message = str(info.value)
    assert "400,000,000" in message or "400000000" in message or "400.0 megapixels" in message
    assert "max_pixels" in message


def test_budget_is_configurable_and_documented_default(tmp_path):
    assert DEFAULT_MAX_PIXELS == 100_000_000
    path = _dcm(tmp_path / "a.dcm", _ramp(40, 50), bits_stored=12)
    with pytest.raises(ImageTooLargeError, match="2,000 pixels"):
        read_image(path, max_pixels=1999)
    image, _ = read_image(path, max_pixels=2000)
    assert image.shape == (40, 50)
    assert read_image(path, max_pixels=None)[0].shape == (40, 50)
    png = tmp_path / "a.png"
    Image.fromarray(_ramp(40, 50, 255, np.uint8), mode="L").save(png)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        read_image(png, max_pixels=1999)
    assert read_image(png, max_pixels=2000)[0].shape == (40, 50)
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(png, max_pixels=0)


def test_png_just_over_pillow_warning_but_under_budget_is_checked_by_us(tmp_path):
    """12000x12000 triggers Pillow's DecompressionBombWarning only; our budget refuses it before load."""
    path = _png_header_only(tmp_path / "big.png", 12000, 12000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageTooLargeError, match="144,000,000"):
            read_image(path)


def test_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    _unblock_fifos_after([fifo], 5.0)
    t0 = time.perf_counter()
    with pytest.raises(NotRegularFileError, match="FIFO"):
        read_image(fifo)
    assert time.perf_counter() - t0 < 2
    assert cxr_embed.is_dicom(fifo) is False
    assert time.perf_counter() - t0 < 2


def test_byte_flip_fuzz_never_leaks_a_builtin_nor_bad_pixels(tmp_path):
    """Random byte flips and cuts of valid DICOM (native, RLE, JPEG-LS), PNG, JPEG and TIFF files:
    each either reads as a finite, non-constant image in [0, 1] or raises a CxrEmbedError."""
    seeds = {"dcm": _dcm(tmp_path / "seed.dcm", _ramp(32, 32), bits_stored=12, WindowCenter=2000,
                         WindowWidth=3000).read_bytes()}
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        seeds[name] = Path(get_testdata_file(name, download=False)).read_bytes()
    for fmt, arr in (("PNG", _ramp(32, 32, 255, np.uint8)), ("JPEG", _ramp(32, 32, 255, np.uint8)),
                     ("TIFF", _ramp(32, 32))):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        seeds[fmt] = buf.getvalue()
    rng = np.random.default_rng(2024)
    leaks, n_read = [], 0
    for name, data in seeds.items():
        for k in range(40):
            mutated = bytearray(data)
            for _ in range(int(rng.integers(1, 6))):
                mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
            if rng.random() < 0.2:
                mutated = mutated[: int(rng.integers(1, len(mutated)))]
            path = tmp_path / f"{name}_{k}.bin"
            path.write_bytes(bytes(mutated))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image, _ = read_image(path)
            except CxrEmbedError as e:
                assert str(path) in str(e)
                continue
            except BaseException as e:  # noqa: BLE001 - what must never happen
                leaks.append(f"{path.name}: {type(e).__name__}: {e}")
                continue
            n_read += 1
            assert np.isfinite(image).all() and 0.0 <= image.min() < image.max() <= 1.0, path.name
    assert not leaks, "\n".join(leaks)
    assert n_read > 0  # some mutations land in pixel values and still read


# ----------------------------------------------------------------------------- good files stay good
def _good_files(folder: Path) -> list[Path]:
    """Files that must read: the radiological variants the checks must not reject."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    out = []
    for i in range(4):
        p = folder / f"good_{i}.png"
        Image.fromarray((rng.random((40 + i, 36)) * 255).astype(np.uint8), mode="L").save(p)
        out.append(p)
    out.append(_dcm(folder / "good_12bit.dcm", _ramp(48, 40), bits_stored=12))
    out.append(_dcm(folder / "good_window.dcm", _ramp(48, 40), bits_stored=12, WindowCenter=2000, WindowWidth=3000))
    out.append(_dcm(folder / "good_mono1.dcm", _ramp(48, 40), bits_stored=12, photometric="MONOCHROME1"))
    out.append(_dcm(folder / "good_rescale.dcm", _ramp(48, 40), bits_stored=12, RescaleSlope=2,
                    RescaleIntercept=-1024))
    out.append(_dcm(folder / "good_float.dcm", _ramp(48, 40).astype(np.float32) / 7.0))
    out.append(_dcm(folder / "good_double.dcm", _ramp(48, 40).astype(np.float64) - 100.0))
    out.append(_dcm(folder / "good_signed.dcm", (_ramp(48, 40).astype(np.int32) - 2048).astype(np.int16),
                    bits_stored=12))
    lut = _lut_item([4096, 0, 16], [int(v) for v in np.sqrt(np.arange(4096) / 4095) * 65535])
    out.append(_dcm(folder / "good_voi_lut.dcm", _ramp(48, 40), bits_stored=12, VOILUTSequence=Sequence([lut])))
    out.append(_dcm(folder / "good_window_clips_some.dcm", _ramp(48, 40), bits_stored=12, WindowCenter=4000,
                    WindowWidth=400))  # most pixels clip to 0, some do not: not constant
    p16 = folder / "good_16bit.png"
    Image.fromarray(_ramp(30, 30, 40000)).save(p16)
    out.append(p16)
    tif = folder / "good_float.tif"
    Image.fromarray(_ramp(20, 20).astype(np.float32) * 0.001, mode="F").save(tif)
    out.append(tif)
    jpg = folder / "good.jpg"
    Image.fromarray(_ramp(32, 32, 255, np.uint8), mode="L").save(jpg, quality=95)
    out.append(jpg)
    os.symlink(out[0], folder / "good_symlink.png")
    out.append(folder / "good_symlink.png")
    return out


def test_good_files_read_finite_in_unit_range(tmp_path):
    for path in _good_files(tmp_path / "good"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image, meta = read_image(path)
        assert image.dtype == np.float32 and image.ndim == 2, path
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0, path
        assert image.max() > image.min(), path


# ----------------------------------------------------------------------------- CLI
def test_cli_info_one_line_error_for_every_case(corpus, capsys):
    from cxr_embed.cli import main

    for case in corpus:
        if case.kwargs.get("frame") is not None or "max_pixels" in case.kwargs:
            continue
        fifos = [case.path] if case.name == "fifo" else []
        if fifos:
            _unblock_fifos_after(fifos, 5.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = main(["info", str(case.path)])
        captured = capsys.readouterr()
        assert status == 2, (case.name, captured.out)
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (case.name, captured.err)
        assert "Traceback" not in captured.err and str(case.path) in lines[0]


def test_cli_info_bad_arguments_one_line(tmp_path, capsys):
    from cxr_embed.cli import main

    path = _dcm(tmp_path / "a.dcm", _ramp(8, 8), bits_stored=12)
    assert main(["info", str(path), "--window", "10", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "width" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- extract survives
def _extract_folder(corpus, tmp_path):
    """Good files interleaved with every bad case (those needing kwargs are read without them)."""
    good = _good_files(tmp_path / "good")
    bad = [c for c in corpus if not c.kwargs]
    items: list[tuple[str, str, bool]] = []
    gi = iter(good)
    for case in bad:
        g = next(gi, None)
        if g is not None:
            items.append((f"good:{g.name}", str(g), True))
        items.append((f"bad:{case.name}", str(case.path), False))
    items.extend((f"good:{g.name}", str(g), True) for g in gi)
    return items


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from test_extraction import real_backbone, tiny_model_file

    bb = real_backbone(tiny_model_file(tmp_path_factory.mktemp("model")))
    if bb is None:  # pragma: no cover - backbones.py always exists now
        pytest.skip("cxr_embed.backbones is absent")
    return bb


@pytest.mark.parametrize("mode", [dict(workers=0), dict(workers=2, executor="thread"),
                                  dict(workers=2, executor="process")], ids=["in_process", "threads", "processes"])
def test_extract_survives_every_bad_file(corpus, tiny_backbone, tmp_path, mode):
    import pandas as pd

    items = _extract_folder(corpus, tmp_path)
    fifos = [Path(p) for _, p, ok in items if not ok and os.path.lexists(p) and stat.S_ISFIFO(os.lstat(p).st_mode)]
    df = pd.DataFrame({"image_id": [i for i, _, _ in items], "path": [p for _, p, _ in items]})
    good_ids = [i for i, _, ok in items if ok]
    bad_ids = {i for i, _, ok in items if not ok}
    store_path = tmp_path / "mixed.h5"
    _unblock_fifos_after(fifos, 20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = cxr_embed.extract(df, tiny_backbone, store_path, batch_size=4, progress=False, **mode)
    failed = {f[0]: f for f in report.failures}
    assert set(failed) == bad_ids, set(failed) ^ bad_ids
    assert report.n_done == len(good_ids) and report.n_failed == len(bad_ids)
    for image_id, path, reason in report.failures:
        assert path == df.set_index("image_id").loc[image_id, "path"]
        assert reason and "Error" in reason.split(":")[0]  # "ClassName: message"
    store = cxr_embed.EmbeddingStore(store_path)
    assert set(store.ids(tiny_backbone).tolist()) == set(good_ids)
    ids, X = store.load(tiny_backbone, good_ids)
    assert np.isfinite(X).all() and (np.abs(X).sum(axis=1) > 0).all()  # no zero rows
    # the good rows equal an extraction of the good files alone
    alone = tmp_path / "alone.h5"
    good_df = df[df.image_id.isin(good_ids)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cxr_embed.extract(good_df, tiny_backbone, alone, batch_size=4, workers=0, progress=False)
    ref = cxr_embed.EmbeddingStore(alone).load(tiny_backbone, good_ids)[1]
    assert X.tobytes() == ref.tobytes()
    # resume: the bad ones are retried and reported again, the good ones are not re-extracted
    _unblock_fifos_after(fifos, 20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = cxr_embed.extract(df, tiny_backbone, store_path, batch_size=4, progress=False, **mode)
    assert (again.n_done, again.n_cached) == (0, len(good_ids))
    assert {f[0] for f in again.failures} == bad_ids


class _Panic(BaseException):
    """Like pyo3's PanicException (raised by Rust decoders): a BaseException, not an Exception."""


class _PrepareBackbone:
    """Wrap a backbone with a custom ``prepare`` that misbehaves on chosen images (thread path)."""

    def __init__(self, inner, behaviour):
        self._inner, self._behaviour = inner, behaviour
        for name in ("name", "input_size", "dim", "config", "fingerprint"):
            setattr(self, name, getattr(inner, name))

    def prepare(self, image):
        out = np.asarray(self._inner.prepare(image), np.float32).copy()
        return self._behaviour(image, out)

    def embed(self, batch, batch_size=32):
        return self._inner.embed(batch, batch_size=batch_size)


@pytest.mark.parametrize("workers", [0, 2])
def test_extract_any_exception_in_prepare_or_after_is_a_failure(tiny_backbone, tmp_path, workers):
    from test_extraction import write_pngs

    paths = write_pngs(tmp_path / "imgs", 8, seed=11)
    sizes = {p: read_image(p)[0].shape for p in paths}

    def behaviour(image, out):
        if image.shape == sizes[paths[1]]:
            out[0, 0, 0] = np.nan  # non-finite after prepare
        elif image.shape == sizes[paths[3]]:
            raise KeyError("custom prepare blew up")
        elif image.shape == sizes[paths[5]]:
            return out[:10]  # wrong shape
        elif image.shape == sizes[paths[6]]:
            raise _Panic("a native extension panicked")  # not even an Exception
        return out

    assert len(set(sizes.values())) == len(paths)  # shapes identify the images
    bb = _PrepareBackbone(tiny_backbone, behaviour)
    report = cxr_embed.extract(paths, bb, tmp_path / "p.h5", batch_size=3, workers=workers, executor="thread",
                               progress=False)
    failed = {f[0]: f[2] for f in report.failures}
    assert set(failed) == {paths[1], paths[3], paths[5], paths[6]}
    assert "non-finite" in failed[paths[1]] and "KeyError" in failed[paths[3]] and "shape" in failed[paths[5]]
    assert "_Panic" in failed[paths[6]]
    stored = set(cxr_embed.EmbeddingStore(tmp_path / "p.h5").ids(bb).tolist())
    assert stored == set(paths) - set(failed)


def test_extract_survives_any_exception_from_the_reader(tiny_backbone, tmp_path, monkeypatch):
    import cxr_embed.io.images as images
    from test_extraction import write_pngs

    paths = write_pngs(tmp_path / "imgs", 6, seed=2)
    real = images.read_image
    boom = {paths[0]: struct.error("unpack requires a buffer of 4 bytes"), paths[2]: MemoryError(),
            paths[4]: RecursionError("maximum recursion depth exceeded")}

    def flaky(path, **kwargs):
        if str(path) in boom:
            raise boom[str(path)]
        return real(path, **kwargs)

    monkeypatch.setattr(images, "read_image", flaky)
    report = cxr_embed.extract(paths, tiny_backbone, tmp_path / "r.h5", batch_size=2, workers=0, progress=False)
    failed = {f[0]: f[2] for f in report.failures}
    assert set(failed) == set(boom)
    assert "unpack requires a buffer" in failed[paths[0]]
    assert "MemoryError" in failed[paths[2]] and "RecursionError" in failed[paths[4]]
    assert report.n_done == 3


def test_extract_embedding_non_finite_row_is_a_failure(tiny_backbone, tmp_path):
    from test_extraction import write_pngs

    paths = write_pngs(tmp_path / "imgs", 5, seed=4)

    class NanRow(_PrepareBackbone):
        def embed(self, batch, batch_size=32):
            out = np.array(self._inner.embed(batch, batch_size=batch_size))
            out[1, 3] = np.nan  # the second row of every pass
            return out

    bb = NanRow(tiny_backbone, lambda image, out: out)
    report = cxr_embed.extract(paths, bb, tmp_path / "n.h5", batch_size=4, workers=0, progress=False)
    failed = {f[0]: f[2] for f in report.failures}
    assert set(failed) == {paths[1]} and "non-finite" in failed[paths[1]]
    ids, X = cxr_embed.EmbeddingStore(tmp_path / "n.h5").load(bb)
    assert sorted(ids.tolist()) == sorted(set(paths) - {paths[1]}) and np.isfinite(X).all()


def test_extract_still_stops_on_errors_about_the_run(tiny_backbone, tmp_path):
    from test_extraction import write_pngs

    paths = write_pngs(tmp_path / "imgs", 4, seed=1)

    class Broken(_PrepareBackbone):
        def embed(self, batch, batch_size=32):
            raise RuntimeError("the backbone is broken")

    with pytest.raises(RuntimeError, match="backbone is broken"):
        cxr_embed.extract(paths, Broken(tiny_backbone, lambda image, out: out), tmp_path / "b.h5", workers=0,
                          progress=False)


def test_extract_passes_max_pixels(tiny_backbone, tmp_path):
    from test_extraction import write_pngs

    paths = write_pngs(tmp_path / "imgs", 3, seed=6)
    report = cxr_embed.extract(paths, tiny_backbone, tmp_path / "m.h5", workers=0, progress=False, max_pixels=100)
    assert report.n_failed == 3 and all("ImageTooLargeError" in f[2] for f in report.failures)
