"""Tests of cxr_embed.io.prepared.read_prepared and the reduced decoders of cxr_embed.io._codecs.

read_prepared computes prepare_image(read_image(path)) on the stored integers; these tests hold it
to that, within 0.01 grey levels (16-bit rounding) for DICOM and bit for bit for 8-bit files, on
every branch of the display function (affine, clipped affine, non-integer breakpoints, SIGMOID,
VOI LUT Sequence, signed, big endian, MONOCHROME1, colour, float) and on the real radiographs
(8-bit files: float rounding only).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian

from cxr_embed.exceptions import ConstantImageError, ImageReadError, InvalidLUTError, NonFiniteImageError
from cxr_embed.io import _codecs
from cxr_embed.io.images import read_image
from cxr_embed.io.prepared import _clipped_affine, read_prepared
from cxr_embed.io.preprocessing import prepare_image
from conftest import shared_dataset
from test_io_dicom import _testdata, _write

TOLERANCE = 0.01  # grey levels on the 0..255 scale (documented in read_prepared)


def _two_step(path, size=(64, 64), **kw):
    interpolation = kw.pop("interpolation", "area")
    mode = kw.pop("mode", "pad")
    return prepare_image(read_image(path, **kw)[0], size, mode=mode, interpolation=interpolation)


def _close(path, size=(64, 64), **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _two_step(path, size, **dict(kw))
        got, meta = read_prepared(path, size, **kw)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= TOLERANCE
    return got, meta


def _ramp(h=90, w=70, top=4095, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 1, h * w).reshape(h, w)
    return np.clip(base * top + rng.normal(0, top * 0.02, (h, w)), 0, top).astype(np.uint16)


@pytest.mark.parametrize("interpolation", ["area", "bilinear"])
@pytest.mark.parametrize("mode", ["pad", "resize", "crop"])
@pytest.mark.parametrize("tags, kw", [
    ({}, {}),                                                       # minmax: affine
    ({"WindowCenter": 2000, "WindowWidth": 1000}, {}),              # clipped affine, integer breakpoints
    ({"WindowCenter": 2000.3, "WindowWidth": 1001}, {}),            # breakpoints between stored values
    ({"WindowCenter": 2000, "WindowWidth": 1000, "VOILUTFunction": "SIGMOID"}, {}),
    ({"WindowCenter": 2000, "WindowWidth": 1000, "VOILUTFunction": "LINEAR_EXACT"}, {}),
    ({"RescaleSlope": 2, "RescaleIntercept": -1024}, {"voi": "none"}),
    ({}, {"window": (1500.0, 800.0)}),
])
def test_matches_two_step_path(tmp_path, tags, kw, mode, interpolation):
    path = _write(tmp_path / "a.dcm", _ramp(), bits_stored=12, **tags)
    _close(path, (48, 40), mode=mode, interpolation=interpolation, **kw)


def test_clipped_affine_detection():
    x = np.arange(100, dtype=np.float64)
    assert _clipped_affine(x / 99) == (0, 99)
    assert _clipped_affine(np.clip((x - 20) / 50, 0, 1)) == (20, 70)
    assert _clipped_affine(1 / (1 + np.exp(-(x - 50) / 10))) is None  # sigmoid
    assert _clipped_affine(np.clip((x - 20.5) / 50, 0, 1)) is None  # a breakpoint between integers


def test_narrow_range_far_from_zero(tmp_path):
    pixels = (_ramp(top=300) + 30000).astype(np.uint16)  # 300 stored values around 30000
    _close(_write(tmp_path / "n.dcm", pixels, bits_stored=16))
    _close(_write(tmp_path / "w.dcm", pixels, bits_stored=16, WindowCenter=30150, WindowWidth=200))


def test_monochrome1_signed_big_endian_8bit(tmp_path):
    pixels = _ramp(top=3000)
    m1, _ = _close(_write(tmp_path / "m1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1",
                          WindowCenter=1500, WindowWidth=2000))
    m2, _ = _close(_write(tmp_path / "m2.dcm", pixels, bits_stored=12, WindowCenter=1500, WindowWidth=2000))
    assert np.abs((255 - m1) - m2)[8:-8, 8:-8].max() <= 2 * TOLERANCE  # inversion, padding aside
    signed = (pixels.astype(np.int32) - 1500).astype(np.int16)
    _close(_write(tmp_path / "s.dcm", signed, signed=True, RescaleSlope=1, RescaleIntercept=0), voi="minmax")
    _close(_write(tmp_path / "s2.dcm", signed, signed=True, WindowCenter=0, WindowWidth=1001))
    little = _close(_write(tmp_path / "le.dcm", pixels, bits_stored=12), voi="none")[0]
    big = _close(_write(tmp_path / "be.dcm", pixels, bits_stored=12, ts=ExplicitVRBigEndian), voi="none")[0]
    np.testing.assert_array_equal(little, big)
    _close(_write(tmp_path / "u8.dcm", (pixels >> 4).astype(np.uint8)))


def test_voi_lut_sequence_and_garbage_high_bits(tmp_path):
    pixels = _ramp() | np.uint16(0xF000)  # garbage above BitsStored must never leak in
    lut = np.sqrt(np.arange(4096) / 4095.0) * 65535
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.round(lut)])
    path = _write(tmp_path / "lut.dcm", pixels, bits_stored=12, VOILUTSequence=Sequence([item]))
    _, meta = _close(path)
    assert meta["voi_applied"] == "lut"


def test_colour_and_float_take_the_two_step_path(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = np.arange(30, dtype=np.uint8) * 8
    path = _write(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    _, meta = _close(path)
    assert meta["voi_applied"] == "color"
    tif = tmp_path / "f.tif"
    Image.fromarray(np.linspace(0, 1, 1200, dtype=np.float32).reshape(40, 30), mode="F").save(tif)
    _close(tif)


def test_png_and_jpeg(tmp_path):
    arr = (_ramp(top=255)).astype(np.uint8)
    png = tmp_path / "a.png"
    Image.fromarray(arr).save(png)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(arr).save(jpg, quality=90)
    for path in (png, jpg):
        want = _two_step(path, (48, 48))
        got, meta = read_prepared(path, (48, 48))
        assert np.abs(got - want).max() < 1e-3  # float rounding only: /255 before or after the resize
        assert meta["reduction"] == 1.0 and meta["bit_depth"] == 8
    png16 = tmp_path / "b.png"
    Image.fromarray(_ramp()).save(png16)
    _close(png16)


@pytest.mark.parametrize("make, error", [
    (lambda p: _write(p, np.full((8, 8), 7, np.uint16)), ConstantImageError),
    (lambda p: _write(p, _ramp(), bits_stored=12, WindowCenter=90000, WindowWidth=10), ConstantImageError),
    (lambda p: _write(p, _ramp(), bits_stored=12, RescaleSlope="0"), InvalidLUTError),
    (lambda p: (p.write_bytes(b"not an image at all" * 10), p)[1], ImageReadError),
])
def test_errors_are_those_of_read_image(tmp_path, make, error):
    path = make(tmp_path / "bad.dcm")
    with pytest.raises(error) as two:
        read_image(path)
    with pytest.raises(error) as one:
        read_prepared(path)
    assert str(one.value) == str(two.value)


def test_float_nan_tiff_refused(tmp_path):
    tif = tmp_path / "nan.tif"
    a = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    a[3, 3] = np.nan
    Image.fromarray(a, mode="F").save(tif)
    with pytest.raises(NonFiniteImageError):
        read_prepared(tif)


def test_arguments_are_checked(tmp_path):
    path = _write(tmp_path / "a.dcm", _ramp(), bits_stored=12)
    for kw in ({"mode": "stretch"}, {"interpolation": "cubic"}, {"decode": "half"}, {"voi": "x"},
               {"max_pixels": 0}):
        with pytest.raises(ValueError):
            read_prepared(path, **kw)


# ------------------------------------------------------------------------- real radiographs
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm"])
def test_real_dicoms_match_two_step_path(name):
    got, meta = _close(_testdata(name), (224, 224))
    assert meta["reduction"] == 1.0 and meta["inverted"] is True


def test_rg1_twins_identical_and_reduced_close():
    uncr, _ = read_prepared(_testdata("RG1_UNCR.dcm"))
    j2kr, _ = read_prepared(_testdata("RG1_J2KR.dcm"))
    np.testing.assert_array_equal(uncr, j2kr)  # lossless: the same input whatever the syntax
    reduced, meta = read_prepared(_testdata("RG1_J2KR.dcm"), decode="reduced")
    assert meta["reduction"] == 2.0  # levels 2+ are skipped: Pillow's reduced size disagrees (1841 columns)
    assert np.corrcoef(uncr.ravel(), reduced.ravel())[0, 1] > 0.999
    assert np.abs(uncr - reduced).mean() < 1.0
    same, meta = read_prepared(_testdata("RG1_UNCR.dcm"), decode="reduced")  # nothing to reduce
    assert meta["reduction"] == 1.0 and np.array_equal(same, uncr)


def test_real_nih_pngs():
    root = shared_dataset("nih_cxr14_1024_sample")
    for path in sorted((root / "images").glob("*.png"))[:3]:
        assert np.abs(read_prepared(path)[0] - _two_step(path, (224, 224))).max() < 1e-3


# ------------------------------------------------------------------------- reduced decoders
def test_j2k_header_and_levels():
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(_testdata("RG3_J2KR.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    info = _codecs.j2k_header(frame)
    assert info == {"rows": 1760, "columns": 1760, "components": 1, "precision": 10, "signed": False,
                    "levels": 5}
    arr, factor = _codecs.decode_pillow_reduced(frame, (224, 224), precision=10)
    assert factor == 4 and arr.shape == (440, 440) and arr.max() <= 1023  # stored values, not 16-bit ones
    full = ds.pixel_array.astype(np.float64)
    box = full.reshape(440, 4, 440, 4).mean(axis=(1, 3))
    assert np.corrcoef(box.ravel(), arr.ravel())[0, 1] > 0.999
    assert _codecs.decode_pillow_reduced(frame, (1000, 1000), precision=10) is None  # needs full size
    assert _codecs.decode_pillow_reduced(frame, (224, 224), precision=12) is None  # header disagrees
    assert _codecs.j2k_header(b"\xff\x4f\xff\x51" + b"\0" * 10) is None


def test_jpeg_draft_reduced(tmp_path):
    arr = _ramp(800, 600, top=255).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(arr).save(path, quality=95)
    got, meta = read_prepared(path, (64, 64), decode="reduced")
    assert meta["reduction"] == 4.0 and (meta["rows"], meta["columns"]) == (800, 600)  # >= 2 x 64 px kept
    full, _ = read_prepared(path, (64, 64))
    assert np.abs(got - full).mean() < 1.0
    data = io.BytesIO()
    Image.fromarray(arr).save(data, "JPEG")
    small, factor = _codecs.decode_pillow_reduced(data.getvalue(), (200, 150))
    assert factor == 4 and small.shape == (200, 150)
