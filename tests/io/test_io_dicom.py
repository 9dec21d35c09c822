"""Tests of cxr_embed.io.dicom: the DICOM display pipeline, PHI policy and error contract."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import data_manager, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         SecondaryCaptureImageStorage, generate_uid)

from cxr_embed.exceptions import (CxrEmbedError, ImageDecodeError, ImageNotFoundError, ImageReadError,
                                  MultiFrameError, NoPixelDataError)
from cxr_embed.io.dicom import (DEFAULT_SALT, is_dicom, parse_age, patient_key, read_dicom,
                                read_dicom_meta)
from conftest import shared_dataset


def _testdata(name: str) -> str:
    """A pydicom / pydicom-data test file, never downloaded."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: is pydicom-data installed? (pip install pydicom-data)"
    return path


def _all_testdata_files() -> list[Path]:
    files = sorted(Path(data_manager.DATA_ROOT, "test_files").rglob("*.dcm"))
    for source in data_manager.get_external_sources().values():
        files += sorted(Path(source.data_path).glob("*.dcm"))
    return [f for f in files if f.is_file() and f.stat().st_size <= 20 * 2**20]


# ----------------------------------------------------------------------------- synthetic files
def _write(path: Path, pixels: np.ndarray | None, *, bits_stored: int | None = None, signed: bool = False,
           photometric: str = "MONOCHROME2", ts=ExplicitVRLittleEndian, **tags) -> Path:
    """Write a minimal Secondary Capture DICOM with ``pixels`` (or none) and extra tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if pixels is not None:
        pixels = np.asarray(pixels)
        frames = pixels.ndim == 3 and photometric not in ("RGB",) or pixels.ndim == 4
        n = pixels.shape[0] if frames else 1
        shape = pixels.shape[1:3] if frames else pixels.shape[:2]
        ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
        if frames:
            ds.NumberOfFrames = n
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        if photometric == "RGB":
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        alloc = pixels.dtype.itemsize * 8
        ds.BitsAllocated = alloc
        ds.BitsStored = bits_stored or alloc
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(signed)
        order = ">" if ts == ExplicitVRBigEndian else "<"
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- pydicom-data radiographs
def test_pydicom_data_radiographs_are_installed():
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"):
        assert Path(_testdata(name)).stat().st_size > 100_000
        assert is_dicom(_testdata(name))


@pytest.mark.parametrize("reference, twin, frame", [
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm", None),       # JPEG 2000 lossless, MONOCHROME1 CR chest
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm", None),       # JPEG 2000 lossless, MONOCHROME1 CR
    ("MR_small.dcm", "MR_small_RLE.dcm", None),   # RLE, signed 16-bit
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", None),  # JPEG-LS
    ("MR_small.dcm", "MR_small_bigendian.dcm", None),         # explicit VR big endian
    ("693_UNCR.dcm", "693_J2KR.dcm", None),
    ("emri_small.dcm", "emri_small_RLE.dcm", 3),              # multi-frame, RLE
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm", 3),
    ("emri_small.dcm", "emri_small_big_endian.dcm", 3),
])
def test_lossless_twins_decode_identically(reference, twin, frame):
    a, meta_a = read_dicom(_testdata(reference), frame=frame)
    b, meta_b = read_dicom(_testdata(twin), frame=frame)
    assert meta_a["transfer_syntax"] != meta_b["transfer_syntax"]
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reference, lossy", [("RG1_UNCR.dcm", "RG1_J2KI.dcm"), ("RG3_UNCR.dcm", "RG3_J2KI.dcm")])
def test_lossy_twin_is_close(reference, lossy):
    a, _ = read_dicom(_testdata(reference))
    b, meta = read_dicom(_testdata(lossy))
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.mean() < 0.02  # measured 0.0017 for RG1
    assert not np.array_equal(a, b)  # it really is lossy


def test_rg1_chest_is_not_inverted():
    image, meta = read_dicom(_testdata("RG1_UNCR.dcm"))
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["inverted"] is True
    assert meta["voi_applied"] == "window" and meta["window"] == (15000.0, 30000.0)
    assert meta["modality"] == "CR" and meta["view_position"] == "PA" and meta["sex"] == "F"
    assert meta["pixel_spacing"] is None  # the file writes PixelSpacing [0, 0]: not a spacing
    assert image.dtype == np.float32 and image.shape == (1955, 1841)
    h, w = image.shape

    def region(y0, y1, x0, x1):
        return float(np.median(image[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]))

    right_lung, left_lung = region(0.20, 0.45, 0.15, 0.30), region(0.20, 0.45, 0.65, 0.80)
    mediastinum = region(0.20, 0.50, 0.46, 0.54)
    # measured: lungs 0.60 / 0.54, mediastinum 0.87; inverted it would be the other way round
    assert mediastinum - max(right_lung, left_lung) > 0.15


@pytest.mark.parametrize("path", _all_testdata_files(), ids=lambda p: p.name)
def test_every_testdata_file_reads_or_raises_documented_error(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own complaints about the broken test files
        header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        full = pydicom.dcmread(path, force=True, defer_size=64)  # pixel data stays on disk
        pi = str(header.get("PhotometricInterpretation", "")).upper()
        try:
            frames = int(header.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            frames = 1
    has_pixels = any(k in full for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    grayscale_single = pi.startswith("MONOCHROME") and frames == 1 and has_pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image, meta = read_dicom(path)
        except ImageReadError as e:  # the documented family, message starts with the path
            assert str(e).startswith(str(path))
            if frames > 1 and path.name not in _KNOWN_BROKEN:
                assert isinstance(e, MultiFrameError) and f"NumberOfFrames={frames}" in str(e)
            if path.name in _KNOWN_BROKEN:
                pass
            elif not has_pixels:
                # SR, RT plan, DICOMDIR ...; without preamble such files are "not DICOM" (no pixels)
                assert isinstance(e, NoPixelDataError) or "not a DICOM file" in str(e)
            elif grayscale_single or not isinstance(e, MultiFrameError):
                # files pydicom's own suite keeps as broken (truncated, bad VR, no BitsAllocated ...)
                assert path.name in _KNOWN_BROKEN, f"{path.name} should read: {e}"
            return
    assert image.ndim == 2 and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    assert image.shape == (meta["rows"], meta["columns"])
    if not grayscale_single:
        assert meta["voi_applied"] == "color"
        assert any("luminance" in str(w.message) for w in caught)
    elif image.size > 16:
        assert image.max() > image.min()  # not a constant image


_KNOWN_BROKEN = {
    "JPEG-lossy.dcm",                          # corrupt JPEG stream (pydicom tests expect failure)
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "MR_truncated.dcm",                        # pixel data shorter than Rows*Columns
    "badVR.dcm",                               # NumberOfFrames '1A'
    "meta_missing_tsyntax.dcm",                # no BitsAllocated
    "nested_priv_SQ.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm",
}


# ----------------------------------------------------------------------------- real SIIM sample
def test_siim_dicom_agrees_with_png_export():
    from PIL import Image

    from cxr_embed.io.images import read_image

    root = shared_dataset("siim_dicom_sample")
    import pandas as pd

    table = pd.read_csv(root / "labels.csv")
    row = table[table["variant"] == "original"].iloc[0]
    image, meta = read_dicom(root / row["dicom_path"])
    png, _ = read_image(root / row["path"])
    small = np.asarray(Image.fromarray(image).resize(png.shape[::-1], Image.BILINEAR))
    r = np.corrcoef(small.ravel(), png.ravel())[0, 1]
    assert r > 0.99, r
    assert meta["modality"] == row["modality"] and meta["view_position"] == row["view"]
    assert meta["sex"] == row["sex"] and meta["age_years"] == float(row["age"])
    assert meta["transfer_syntax"] == row["transfer_syntax"] and meta["bits_stored"] == row["bits_stored"]
    assert meta["patient_key"] and len(meta["patient_key"]) == 16


def test_siim_fake_monochrome1_reads_as_inverse():
    root = shared_dataset("siim_dicom_sample")
    original, meta_o = read_dicom(next((root / "dicom").glob("1.2.*.dcm")))
    inverse, meta_i = read_dicom(root / "dicom" / "Fake_MONOHR1.dcm")
    assert meta_o["photometric_interpretation"] == "MONOCHROME2" and not meta_o["inverted"]
    assert meta_i["photometric_interpretation"] == "MONOCHROME1" and meta_i["inverted"]
    assert np.corrcoef(original.ravel(), inverse.ravel())[0, 1] < -0.99
    np.testing.assert_allclose(inverse, 1.0 - original, atol=1e-6)


# ----------------------------------------------------------------------------- synthetic DICOMs
def test_signed_pixels_with_rescale(tmp_path):
    stored = np.array([[-1000, -200, 0], [100, 500, 1000]], dtype=np.int16)
    path = _write(tmp_path / "ct.dcm", stored, signed=True, RescaleSlope=2, RescaleIntercept=-1024)
    hu = stored.astype(np.float64) * 2 - 1024
    image, meta = read_dicom(path, voi="minmax")
    np.testing.assert_allclose(image, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    assert meta["voi_applied"] == "minmax"
    # "auto" without window falls back to minmax
    np.testing.assert_array_equal(read_dicom(path)[0], image)
    # "none": the full stored range (-32768..32767) through the rescale
    lo, hi = -32768 * 2 - 1024, 32767 * 2 - 1024
    np.testing.assert_allclose(read_dicom(path, voi="none")[0], (hu - lo) / (hi - lo), atol=1e-6)
    # an explicit window is in rescaled (HU) units: center -1024 +- 1000
    windowed, meta_w = read_dicom(path, window=(-1024.0, 2000.0))
    expected = np.clip((hu - (-1024 - 0.5)) / (2000 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    assert meta_w["voi_applied"] == "window" and meta_w["window"] == (-1024.0, 2000.0)


def test_big_endian_equals_little_endian(tmp_path):
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 997 % 4096
    little = _write(tmp_path / "le.dcm", pixels, bits_stored=12)
    big = _write(tmp_path / "be.dcm", pixels, bits_stored=12, ts=ExplicitVRBigEndian)
    a, meta_a = read_dicom(little, voi="none")
    b, meta_b = read_dicom(big, voi="none")
    assert meta_b["transfer_syntax"] == ExplicitVRBigEndian
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, pixels / 4095.0, atol=1e-6)


def test_bits_stored_masks_garbage_high_bits(tmp_path):
    clean = np.array([[0, 1, 2048], [4000, 4095, 17]], dtype=np.uint16)
    dirty = clean | np.array([[0xF000, 0x5000, 0xA000], [0x1000, 0xF000, 0x3000]], dtype=np.uint16)
    path = _write(tmp_path / "dirty.dcm", dirty, bits_stored=12)
    image, meta = read_dicom(path, voi="none")
    assert meta["bits_stored"] == 12
    # scaled by 2**BitsStored - 1 (never by BitsAllocated), garbage ignored
    np.testing.assert_allclose(image, clean / 4095.0, atol=1e-6)
    np.testing.assert_array_equal(read_dicom(path, voi="minmax")[0],
                                  read_dicom(_write(tmp_path / "clean.dcm", clean, bits_stored=12), voi="minmax")[0])



@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("frames", [None, 1])
def test_native_masking_path_equals_pydicom_and_ignores_garbage(tmp_path, ts, frames, monkeypatch):
    """Uncompressed little-endian data with unused high bits is masked here, on a view of the pixel
    data (issue 11: one pass instead of pydicom's copy + two shifts): same values as pydicom's own
    correction, for single frames and a frame of a multi-frame file, read_prepared included."""
    import cxr_embed.io.dicom as dicom_module
    from cxr_embed import read_prepared

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 1024, (2, 40, 30) if frames is not None else (40, 30)).astype(np.uint16)
    dirty = clean | (rng.integers(0, 64, clean.shape).astype(np.uint16) << 10)
    path = _write(tmp_path / "dirty.dcm", dirty, bits_stored=10, ts=ts)
    taken = []
    real = dicom_module._masks_itself
    monkeypatch.setattr(dicom_module, "_masks_itself", lambda *a: taken.append(real(*a)) or taken[-1])
    image, _ = read_dicom(path, voi="none", frame=frames)
    assert taken == [True]
    expected = pydicom.pixels.pixel_array(pydicom.dcmread(path), index=frames)
    np.testing.assert_array_equal(expected, clean[frames] if frames is not None else clean)
    np.testing.assert_allclose(image, expected / 1023.0, atol=1e-6)
    x, _ = read_prepared(path, (20, 20), frame=frames, voi="none")
    clean_path = _write(tmp_path / "clean.dcm", clean, bits_stored=10, ts=ts)
    np.testing.assert_array_equal(x, read_prepared(clean_path, (20, 20), frame=frames, voi="none")[0])
    # signed data and compressed syntaxes keep pydicom's own correction
    assert not real(pydicom.dcmread(path), {"bits_stored": 10, "transfer_syntax": "1.2.840.10008.1.2.4.90"},
                    "PixelData", False)
    assert not real(pydicom.dcmread(path), {"bits_stored": 10, "transfer_syntax": str(ts)}, "PixelData", True)

def test_voi_lut_sequence_preferred_then_window(tmp_path):
    pixels = np.array([[0, 100, 1000], [2000, 3000, 4095]], dtype=np.uint16)
    lut = np.sqrt(np.arange(4096) / 4095.0) * 65535
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.round(lut)])  # LUTData
    path = _write(tmp_path / "lut.dcm", pixels, bits_stored=12, VOILUTSequence=Sequence([item]),
                  WindowCenter=2048, WindowWidth=4096)
    image, meta = read_dicom(path)
    assert meta["voi_applied"] == "lut"
    np.testing.assert_allclose(image, np.round(lut[pixels]) / 65535.0, atol=1e-6)
    assert read_dicom(path, voi="lut")[1]["voi_applied"] == "lut"
    windowed, meta_w = read_dicom(path, voi="window")
    assert meta_w["voi_applied"] == "window"
    np.testing.assert_allclose(windowed, np.clip((pixels - 2047.5) / 4095 + 0.5, 0, 1), atol=1e-6)


def test_window_first_value_and_functions(tmp_path):
    pixels = np.array([[0, 200, 300, 400, 500, 600, 800]], dtype=np.uint16)
    path = _write(tmp_path / "w.dcm", pixels, WindowCenter=[400.5, 100], WindowWidth=[401, 50])
    image, meta = read_dicom(path)
    assert meta["window"] == (400.5, 401.0)  # the first of several windows
    # PS3.3 C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped
    np.testing.assert_allclose(image[0], [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    sig = _write(tmp_path / "s.dcm", pixels, WindowCenter=400, WindowWidth=400, VOILUTFunction="SIGMOID")
    s, _ = read_dicom(sig)
    np.testing.assert_allclose(s[0], 1 / (1 + np.exp(-4 * (pixels[0] - 400.0) / 400)), atol=1e-6)
    with pytest.raises(ImageReadError, match="no VOI LUT Sequence"):
        read_dicom(path, voi="lut")
    with pytest.raises(ImageReadError, match="WindowCenter"):
        read_dicom(_write(tmp_path / "nw.dcm", pixels), voi="window")
    with pytest.raises(ValueError, match="voi must be one of"):
        read_dicom(path, voi="bogus")
    with pytest.raises(ValueError, match="width"):
        read_dicom(path, window=(10, 0))


def test_monochrome1_is_inverted_after_voi(tmp_path):
    pixels = np.array([[0, 100, 200], [300, 400, 500]], dtype=np.uint16)
    m2, _ = read_dicom(_write(tmp_path / "m2.dcm", pixels, WindowCenter=200, WindowWidth=300))
    m1, meta = read_dicom(_write(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1",
                                 WindowCenter=200, WindowWidth=300))
    assert meta["inverted"]
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-7)


def test_multiframe_needs_frame(tmp_path):
    frames = np.stack([np.full((4, 5), v, dtype=np.uint16) for v in (10, 20, 30)])
    frames[:, 0, 0] = 0
    frames[:, -1, -1] = 40
    path = _write(tmp_path / "mf.dcm", frames)
    with pytest.raises(MultiFrameError, match="NumberOfFrames=3") as info:
        read_dicom(path)
    assert "frame=" in str(info.value) and str(info.value).startswith(str(path))
    image, meta = read_dicom(path, frame=1)
    assert image.shape == (4, 5) and meta["frame"] == 1 and meta["number_of_frames"] == 3
    assert image[1, 1] == pytest.approx(20 / 40)
    assert read_dicom(path, frame=2)[0][1, 1] == pytest.approx(30 / 40)
    with pytest.raises(MultiFrameError, match="out of range"):
        read_dicom(path, frame=3)


def test_rgb_to_luminance_with_warning(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    rgb[1, 1] = (255, 255, 255)
    path = _write(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    with pytest.warns(UserWarning, match="luminance"):
        image, meta = read_dicom(path)
    np.testing.assert_allclose(image, [[0.299, 0.587], [0.114, 1.0]], atol=1e-6)
    assert meta["voi_applied"] == "color"


def test_no_pixel_data(tmp_path):
    path = _write(tmp_path / "sr.dcm", None)
    assert is_dicom(path)
    with pytest.raises(NoPixelDataError, match="no pixel data") as info:
        read_dicom(path)
    assert str(info.value).startswith(str(path))
    assert read_dicom_meta(path)["modality"] == "CR"  # the header is still readable


_PHI = {
    "PatientName": "Doe^Johnathan",
    "PatientBirthDate": "19610315",
    "AccessionNumber": "ACC55501234",
    "PatientID": "PID-98765-XYZ",
    "OtherPatientIDs": "OTHER-4242",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "Who^Doctor",
    "StudyID": "STUDY-777",
    "StudyDate": "20190704",
}


def test_phi_never_in_meta_or_logs(tmp_path, caplog, monkeypatch):
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4)
    path = _write(tmp_path / "phi.dcm", pixels, PatientAge="045Y", PatientSex="M", ViewPosition="AP",
                  ImageLaterality="L", ImagerPixelSpacing=[0.139, 0.139], **_PHI)
    monkeypatch.delenv("CXR_EMBED_SALT", raising=False)
    with caplog.at_level(logging.DEBUG, logger="cxr_embed"):
        _, meta = read_dicom(path)
        header = read_dicom_meta(path)
    text = repr(meta) + repr(header) + caplog.text
    for value in _PHI.values():
        for part in str(value).split("^"):
            assert part not in text, f"identifier {part!r} leaked"
    assert meta["age_years"] == 45.0 and meta["sex"] == "M" and meta["view_position"] == "AP"
    assert meta["laterality"] == "L" and meta["pixel_spacing"] == (0.139, 0.139)
    assert meta["patient_key"] == patient_key(_PHI["PatientID"], DEFAULT_SALT)
    assert read_dicom(path, salt="mine")[1]["patient_key"] == patient_key(_PHI["PatientID"], "mine")
    monkeypatch.setenv("CXR_EMBED_SALT", "from-env")
    assert read_dicom(path)[1]["patient_key"] == patient_key(_PHI["PatientID"], "from-env")
    assert len({patient_key(_PHI["PatientID"], s) for s in ("a", "b", "from-env", DEFAULT_SALT)}) == 4
    assert set(header) <= set(meta)


@pytest.mark.parametrize("text, years", [("045Y", 45.0), ("006M", 0.5), ("010W", 70 / 365.25),
                                         ("003D", 3 / 365.25), ("62", 62.0), ("", None), (None, None),
                                         ("abc", None)])
def test_parse_age(text, years):
    assert parse_age(text) == (pytest.approx(years) if years is not None else None)


def test_patient_key_default_salt_warns_and_is_reversible(monkeypatch):
    """The public default salt protects nothing (brute force), so using it warns; a secret salt does not."""
    monkeypatch.delenv("CXR_EMBED_SALT", raising=False)
    with pytest.warns(UserWarning, match="DEFAULT_SALT.*brute force"):
        leaked = patient_key("4711")
    # what an attacker does with a public salt: hash every candidate id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = [f"{i:04d}" for i in range(10_000) if patient_key(f"{i:04d}", DEFAULT_SALT) == leaked]
    assert found == ["4711"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a secret salt, by argument or environment: silent
        secret = patient_key("4711", salt="a3f9c1d2e4b5a6978877665544332211")
        monkeypatch.setenv("CXR_EMBED_SALT", "b" * 32)
        from_env = patient_key("4711")
    assert secret != leaked and from_env not in (leaked, secret)
    assert patient_key("4711", DEFAULT_SALT) not in (secret, from_env)


def test_read_dicom_warns_about_the_default_salt(tmp_path, monkeypatch):
    path = _write(tmp_path / "p.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4), PatientID="1234567")
    monkeypatch.delenv("CXR_EMBED_SALT", raising=False)
    with pytest.warns(UserWarning, match="DEFAULT_SALT"):
        read_dicom(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dicom(path, salt="project secret")


def test_patient_key_properties():
    assert patient_key(None) is None and patient_key("  ") is None
    key = patient_key("12345", "s")
    assert len(key) == 16 and int(key, 16) >= 0 and "12345" not in key
    assert key == patient_key(" 12345 ", "s")


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, type]]:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(_testdata("RG1_UNCR.dcm")).read_bytes()[:1000])
    truncated_pixels = tmp_path / "truncated_pixels.dcm"
    truncated_pixels.write_bytes(Path(_testdata("RG1_UNCR.dcm")).read_bytes()[:20000])
    no_pixels = _write(tmp_path / "nopixels.dcm", None)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 20)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "empty": (empty, ImageReadError),
        "truncated": (truncated, ImageReadError),
        "truncated_pixels": (truncated_pixels, ImageReadError),
        "no_pixels": (no_pixels, NoPixelDataError),
        "text_png": (text, ImageReadError),
        "directory": (folder, ImageNotFoundError),
        "missing": (tmp_path / "missing.dcm", ImageNotFoundError),
    }


@pytest.mark.parametrize("case", ["empty", "truncated", "truncated_pixels", "no_pixels", "text_png",
                                  "directory", "missing"])
@pytest.mark.parametrize("reader", ["read_dicom", "read_image"])
def test_bad_input_raises_documented_error(tmp_path, case, reader):
    from cxr_embed.io.images import read_image

    path, expected = _bad_inputs(tmp_path)[case]
    fn = read_dicom if reader == "read_dicom" else read_image
    with pytest.raises(expected) as info:
        fn(path)
    message = str(info.value)
    assert message.startswith(str(path)) and path.name in message
    assert "fix" in message
    assert isinstance(info.value, CxrEmbedError)
    if expected is ImageNotFoundError:
        assert isinstance(info.value, FileNotFoundError)
    if case == "truncated":
        assert "truncated" in message
    if case == "truncated_pixels":  # detected from the declared length, before pydicom is asked to decode
        assert "truncated" in message and isinstance(info.value, ImageDecodeError)


def test_is_dicom_by_content(tmp_path):
    real = Path(_testdata("CT_small.dcm"))
    renamed = tmp_path / "image.png"
    renamed.write_bytes(real.read_bytes())
    assert is_dicom(renamed)
    text = tmp_path / "x.dcm"
    text.write_text("DICM" * 100)
    assert not is_dicom(text)
    fake = tmp_path / "fake.dcm"  # starts like a no-preamble DICOM but is garbage
    fake.write_bytes(b"\x08\x00" + bytes(range(256)) * 4)
    assert not is_dicom(fake)
    assert not is_dicom(tmp_path) and not is_dicom(tmp_path / "missing")
    no_preamble = tmp_path / "acr_nema.dcm"  # a dataset written without preamble/file meta
    ds = pydicom.dcmread(real)
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(no_preamble, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert no_preamble.read_bytes()[128:132] != b"DICM"
    assert is_dicom(no_preamble)
    a, _ = read_dicom(no_preamble)
    np.testing.assert_array_equal(a, read_dicom(real)[0])
