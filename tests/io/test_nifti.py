"""NIfTI radiographs: nibabel-written 2-D and 3-D files read back upright, by content, scaled like the rest."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

nib = pytest.importorskip("nibabel")

from cxr_embed.exceptions import ImageReadError, MultiFrameError  # noqa: E402
from cxr_embed.io.images import read_image  # noqa: E402
from cxr_embed.io.manifest import load_manifest  # noqa: E402
from cxr_embed.io.nifti import is_nifti, read_nifti  # noqa: E402

# What a viewer should show: 6 rows (head -> feet) x 4 columns (patient's right -> left), asymmetric
# in both directions, so any flip or transpose is caught.
DISPLAY = np.arange(24, dtype=np.uint8).reshape(6, 4) * 10 + 5


def _ras_volume(display, row_world, col_world, row_sign, col_sign):
    """Store ``display`` in a 3-D RAS-affine volume whose in-plane voxel axes run along the given world
    axes (0=x, 1=y, 2=z); sign +1 means the voxel index grows towards R/A/S."""
    rows, cols = display.shape
    third = ({0, 1, 2} - {row_world, col_world}).pop()
    shape = [0, 0, 0]
    shape[row_world], shape[col_world], shape[third] = rows, cols, 1
    vol = np.zeros(shape, display.dtype)
    for r in range(rows):
        for c in range(cols):
            idx = [0, 0, 0]
            # display rows grow towards I (or P), columns towards L (or P): i.e. towards negative RAS
            idx[row_world] = rows - 1 - r if row_sign > 0 else r
            idx[col_world] = cols - 1 - c if col_sign > 0 else c
            vol[tuple(idx)] = display[r, c]
    affine = np.eye(4)
    affine[row_world, row_world], affine[col_world, col_world] = row_sign, col_sign
    return vol, affine


@pytest.mark.parametrize("row_sign", [1, -1])
@pytest.mark.parametrize("col_sign", [1, -1])
@pytest.mark.parametrize("swap", [False, True])
def test_coronal_radiograph_comes_back_upright_whatever_the_storage(tmp_path, row_sign, col_sign, swap):
    vol, affine = _ras_volume(DISPLAY, 2, 0, row_sign, col_sign)  # rows along S/I, columns along R/L
    if swap:  # store voxel axes in another order: the affine's columns say where they point
        vol = np.transpose(vol, (2, 1, 0))
        affine = affine[:, [2, 1, 0, 3]]
    p = tmp_path / "cxr.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), p)
    image, meta = read_image(p)
    assert meta["source"] == "nifti" and meta["display"] == "rows->I, columns->L"
    np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), DISPLAY)


def test_two_d_file_written_like_itk_lps_reads_as_displayed(tmp_path):
    # ITK/SimpleITK write a 2-D image as data[column, row] with LPS identity (RAS diag(-1, -1, 1))
    p = tmp_path / "itk.nii"
    nib.save(nib.Nifti1Image(DISPLAY.T.copy(), np.diag([-1.0, -1.0, 1.0, 1.0])), p)
    image, meta = read_nifti(p)
    np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), DISPLAY)
    assert meta["display"] == "rows->P, columns->L" and meta["axcodes"] == "LPS"
    assert meta["rows"], meta["columns"] == DISPLAY.shape and meta["bit_depth"] == 8 and meta["scaling"] == "8-bit"


def test_three_d_stack_needs_frame_and_returns_that_slice(tmp_path):
    stack = np.stack([DISPLAY.T.astype(np.uint16) * (k + 1) * 100 for k in range(3)], axis=2)
    p = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(stack, np.diag([-1.0, -1.0, 1.0, 1.0])), p)
    with pytest.raises(MultiFrameError, match="frame=<0..2>"):
        read_image(p)
    with pytest.raises(MultiFrameError, match="out of range"):
        read_image(p, frame=3)
    image, meta = read_image(p, frame=1)
    assert meta["number_of_frames"] == 3 and meta["frame"] == 1 and meta["scaling"] == "16-bit/65535"
    np.testing.assert_allclose(image, DISPLAY.astype(float) * 200 / 65535, rtol=1e-6)
    with pytest.raises(MultiFrameError, match="2-D"):
        read_nifti(_two_d(tmp_path), frame=1)


def _two_d(tmp_path):
    p = tmp_path / "two_d.nii"
    nib.save(nib.Nifti1Image(DISPLAY.T.copy(), np.diag([-1.0, -1.0, 1.0, 1.0])), p)
    return p


def test_float_and_signed_data_are_min_max_scaled_and_spacing_reported(tmp_path):
    data = (DISPLAY.T.astype(np.float32) - 100.0) * 3.0
    img = nib.Nifti1Image(data, np.diag([-0.2, -0.3, 1.0, 1.0]))
    p = tmp_path / "f.nii"
    nib.save(img, p)
    image, meta = read_image(p)
    assert meta["scaling"] == "minmax" and image.min() == 0.0 and image.max() == 1.0
    assert meta["pixel_spacing"] == pytest.approx((0.3, 0.2))  # rows along P (0.3 mm), columns along L
    unit = nib.Nifti1Image(DISPLAY.T.astype(np.float32) / 255.0, np.diag([-1.0, -1.0, 1.0, 1.0]))
    nib.save(unit, tmp_path / "u.nii")
    assert read_image(tmp_path / "u.nii")[1]["scaling"] == "float"


def test_detected_by_content_not_by_name(tmp_path):
    p = _two_d(tmp_path)
    renamed = tmp_path / "looks_like.png"
    shutil.copy(p, renamed)
    assert is_nifti(renamed) and read_image(renamed)[1]["source"] == "nifti"
    gz = tmp_path / "no_suffix"
    with open(p, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    assert is_nifti(gz)
    fake = tmp_path / "fake.nii"
    fake.write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 400)  # sizeof_hdr 348 but no magic
    assert not is_nifti(fake)
    nib.save(nib.Nifti2Image(DISPLAY.T.copy(), np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "v2.nii")
    image, meta = read_image(tmp_path / "v2.nii")
    assert meta["nifti_version"] == 2 and image.shape == DISPLAY.shape


def test_broken_files_are_errors_with_the_path(tmp_path):
    nan = DISPLAY.T.astype(np.float32)
    nan[0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(tmp_path / "nan.nii")
    nib.save(nib.Nifti1Image(np.full((4, 4), 7, np.uint8), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 2), np.uint8), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(ImageReadError, match="4-D"):
        read_image(tmp_path / "4d.nii")
    good = _two_d(tmp_path)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:360])
    with pytest.raises(ImageReadError, match=str(cut)):
        read_image(cut)


def test_manifest_folders_accept_nii_and_nii_gz(tmp_path):
    for cls in ("normal", "pneumonia"):
        (tmp_path / cls).mkdir()
        nib.save(nib.Nifti1Image(DISPLAY.T.copy(), np.eye(4)), tmp_path / cls / "a.nii")
        nib.save(nib.Nifti1Image(DISPLAY.T.copy(), np.eye(4)), tmp_path / cls / "b.nii.gz")
    df = load_manifest(tmp_path, format="folders")
    assert sorted(df["image_id"]) == ["normal/a", "normal/b", "pneumonia/a", "pneumonia/b"]
    assert isinstance(df, pd.DataFrame) and all(read_image(p)[0].shape == (6, 4) for p in df["path"])
