"""Tests of cxr_embed.io.images.read_image (Pillow formats, DICOM by content) and the example script."""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxr_embed.exceptions import ImageNotFoundError, ImageReadError, MultiFrameError
from cxr_embed.io.dicom import read_dicom
from cxr_embed.io.images import read_image

ROOT = Path(__file__).resolve().parents[2]


def _gradient(h=24, w=32, top=255, dtype=np.uint8) -> np.ndarray:
    """A deterministic image: horizontal ramp plus a bright square top-left."""
    a = np.tile(np.linspace(0, top * 0.6, w), (h, 1))
    a[: h // 3, : w // 3] = top
    return np.round(a).astype(dtype)


def test_png_8bit(tmp_path):
    pixels = _gradient()
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.png")
    image, meta = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == pixels.shape
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-7)
    assert meta["source"] == "png" and meta["bit_depth"] == 8 and meta["mode"] == "L"
    assert (meta["rows"], meta["columns"]) == pixels.shape


def test_png_16bit_scaled_by_full_range(tmp_path):
    pixels = _gradient(top=4095, dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(pixels).save(tmp_path / "a16.png")
    with Image.open(tmp_path / "a16.png") as img:
        assert img.mode in ("I;16", "I")
    image, meta = read_image(tmp_path / "a16.png")
    assert meta["bit_depth"] == 16 and meta["scaling"] == "16-bit/65535"
    # divided by 65535, not stretched to its own max (exposure differences must survive)
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-7)
    assert image.max() == pytest.approx(4095 / 65535, abs=1e-7)


def test_rgb_and_rgba_to_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, :] = (255, 0, 0)
    rgb[1, :] = (0, 255, 0)
    rgb[2, :] = (0, 0, 255)
    rgb[3, :] = (200, 200, 200)
    expected = (rgb.astype(float) @ [0.299, 0.587, 0.114]) / 255.0
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    rgba = np.dstack([rgb, np.full((4, 4), 17, np.uint8)])  # alpha must be ignored
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c4.png")
    for name in ("c.png", "c4.png"):
        with pytest.warns(UserWarning, match="luminance"):
            image, meta = read_image(tmp_path / name)
        np.testing.assert_allclose(image, expected, atol=1e-6)
        assert meta["mode"] == ("RGB" if name == "c.png" else "RGBA")


def test_gray_stored_as_rgb_is_silent(tmp_path):
    pixels = _gradient()
    Image.fromarray(np.dstack([pixels] * 3), mode="RGB").save(tmp_path / "g.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, _ = read_image(tmp_path / "g.png")
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-6)


def test_jpeg(tmp_path):
    pixels = _gradient(64, 64)
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.jpg", quality=95)
    image, meta = read_image(tmp_path / "a.jpg")
    assert meta["source"] == "jpeg" and image.shape == (64, 64)
    assert np.abs(image - pixels / 255.0).mean() < 0.01


def test_tiff_8_16_and_multipage(tmp_path):
    p8, p16 = _gradient(), _gradient(top=60000, dtype=np.uint16)
    Image.fromarray(p8, mode="L").save(tmp_path / "a.tif")
    Image.fromarray(p16).save(tmp_path / "b.tiff")
    image8, meta8 = read_image(tmp_path / "a.tif")
    image16, meta16 = read_image(tmp_path / "b.tiff")
    assert meta8["source"] == meta16["source"] == "tiff"
    np.testing.assert_allclose(image8, p8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(image16, p16 / 65535.0, atol=1e-7)
    pages = [np.full((5, 6), v, np.uint8) for v in (0, 100, 200)]
    for page in pages:
        page[0, 0] = 255  # not blank: a constant page is refused (ConstantImageError)
    pages = [Image.fromarray(page, mode="L") for page in pages]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(MultiFrameError, match="3 frames"):
        read_image(tmp_path / "m.tif")
    image, meta = read_image(tmp_path / "m.tif", frame=2)
    assert meta["frame"] == 2 and meta["number_of_frames"] == 3
    np.testing.assert_allclose(image[1:], 200 / 255.0, atol=1e-7)
    assert image[0, 0] == 1.0


def test_exif_rotated_jpeg(tmp_path):
    pixels = np.zeros((40, 60), np.uint8)
    pixels[:12, :12] = 255  # bright block top-left of the stored pixels
    img = Image.fromarray(pixels, mode="L")
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    image, meta = read_image(tmp_path / "rot.jpg")
    assert meta["exif_transposed"] is True
    assert image.shape == (60, 40)  # displayed upright
    # stored top-left goes to displayed top-right after a clockwise quarter turn
    assert image[:12, -12:].mean() > 0.9 and image[:12, :12].mean() < 0.1
    np.testing.assert_allclose(image, np.rot90(read_image_without_exif(tmp_path / "rot.jpg"), k=-1), atol=1e-6)


def read_image_without_exif(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def test_dicom_detected_by_content_not_suffix(tmp_path):
    src = get_testdata_file("CT_small.dcm", download=False)
    disguised = tmp_path / "scan.png"
    shutil.copy(src, disguised)
    image, meta = read_image(disguised)
    assert meta["source"] == "dicom"
    np.testing.assert_array_equal(image, read_dicom(src)[0])
    # and a PNG named .dcm is read as PNG
    Image.fromarray(_gradient(), mode="L").save(tmp_path / "image.dcm", format="PNG")
    assert read_image(tmp_path / "image.dcm")[1]["source"] == "png"
    # DICOM options pass through
    windowed, meta_w = read_image(disguised, window=(40, 400))
    assert meta_w["window"] == (40.0, 400.0)


def test_bad_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageReadError, match="notes.png") as info:
        read_image(text)
    assert info.value.__cause__ is not None and "fix" in str(info.value)
    Image.fromarray(_gradient(200, 200), mode="L").save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageNotFoundError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")
    with pytest.raises(ValueError, match="voi must be one of"):
        read_image(tmp_path / "full.png", voi="wrong")
    with pytest.warns(UserWarning, match="DICOM only"):
        read_image(tmp_path / "full.png", window=(1, 2))


def test_example_script_reads_a_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_gradient(), mode="L").save(folder / "a.png")
    Image.fromarray(_gradient(top=4095, dtype=np.uint16)).save(folder / "b.png")
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "c.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), folder / "d.dcm")
    (folder / "e_broken.png").write_text("text, not an image")
    script = ROOT / "examples" / "read_dicom_folder.py"
    run = subprocess.run([sys.executable, str(script), str(folder), "--limit", "3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("OK ") == 3 and "read 3 of 3" in run.stdout
    assert "c.dcm" in run.stdout and "source=dicom" in run.stdout and "shape=(128, 128)" in run.stdout
    run = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1  # the broken file is reported, not hidden
    assert "FAIL e_broken.png" in run.stdout and "read 4 of 5" in run.stdout


def test_32bit_tiff_scaled_by_own_range_with_warning(tmp_path):
    pixels = (np.arange(12).reshape(3, 4) * 1000 - 2000).astype(np.int32)
    Image.fromarray(pixels, mode="I").save(tmp_path / "i32.tif")
    with pytest.warns(UserWarning, match="own min/max"):
        image, meta = read_image(tmp_path / "i32.tif")
    assert meta["bit_depth"] == 32 and meta["scaling"] == "minmax"
    np.testing.assert_allclose(image, (pixels + 2000) / 11000.0, atol=1e-6)
