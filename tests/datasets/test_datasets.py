"""Tests of cxr_embed.datasets: synthetic phantoms, their masks, site effects and writers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from cxr_embed.datasets import (
    FINDINGS,
    SITES,
    SiteProfile,
    SyntheticCXR,
    cardiothoracic_ratio,
    load_masks,
    make_demo_sites,
    make_synthetic_cxr,
    write_dataset,
)


@pytest.fixture(scope="module")
def ds():
    """200 images at 128 px with the planted marker shortcut (about a second)."""
    return make_synthetic_cxr(200, size=128, seed=7, marker_shortcut=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory, ds):
    """The first 12 images written as DICOM (MONOCHROME1) and PNG."""
    out = tmp_path_factory.mktemp("synthetic")
    small = ds.subset(slice(0, 12))
    return small, write_dataset(small, out, format="both", monochrome1=True)


# --- rendering ---------------------------------------------------------------
def test_shapes_dtypes_ranges_and_labels(ds):
    n, size = 200, 128
    assert isinstance(ds, SyntheticCXR) and len(ds) == n
    assert ds.images.shape == (n, size, size) and ds.images.dtype == np.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert set(ds.masks) == {*FINDINGS, "marker"}
    for m in [*ds.masks.values(), *ds.anatomy.values()]:
        assert m.shape == (n, size, size) and m.dtype == bool
    assert list(ds.labels.columns) == ["image_id", "patient_id", *FINDINGS, "site", "sex", "age", "view"]
    assert ds.labels["image_id"].is_unique and ds.labels["patient_id"].is_unique
    for f in FINDINGS:
        assert set(ds.labels[f]) == {0, 1}
        assert 0.35 < ds.labels[f].mean() < 0.65  # Bernoulli(0.5)
    assert set(ds.labels["sex"]) == {"F", "M"} and set(ds.labels["view"]) <= {"AP", "PA"}
    assert ds.labels["age"].between(18, 90).all() and (ds.labels["site"] == "A").all()
    assert len(ds.params) == n and list(ds.params["image_id"]) == list(ds.labels["image_id"])


def test_air_dark_lungs_dark_heart_and_bone_bright(ds):
    img, lungs, heart, thorax = ds.images, ds.anatomy["lungs"], ds.anatomy["heart"], ds.anatomy["thorax"]
    air = img[:, 40:90, :4]  # outside the body at the sides, away from the markers
    lung_only = lungs & ~heart
    for i in range(0, 200, 20):
        lung_mean = img[i][lung_only[i]].mean()
        assert air[i].mean() < 0.1
        assert lung_mean < img[i][heart[i] & ~lungs[i]].mean() - 0.15
        assert lung_mean < img[i][thorax[i] & ~lungs[i] & ~heart[i]].mean() - 0.15
    # ribs: bright bands inside the lungs give a strong vertical periodicity of the lung profile
    prof = np.array([img[i][40:100, 20:50].mean(axis=1) for i in range(20)])
    assert np.mean(np.abs(np.diff(prof, axis=1))) > 0.005


def test_determinism_and_variation():
    a = make_synthetic_cxr(6, size=64, seed=123, marker_shortcut=True)
    b = make_synthetic_cxr(6, size=64, seed=123, marker_shortcut=True)
    c = make_synthetic_cxr(6, size=64, seed=124, marker_shortcut=True)
    np.testing.assert_array_equal(a.images, b.images)
    for k in a.masks:
        np.testing.assert_array_equal(a.masks[k], b.masks[k])
    pd.testing.assert_frame_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    # the same seed gives the same patients, labels and lesions at another size
    big = make_synthetic_cxr(6, size=96, seed=123, marker_shortcut=True)
    pd.testing.assert_frame_equal(a.labels, big.labels)
    pd.testing.assert_frame_equal(a.params, big.params)
    # no two images of a dataset are alike
    flat = a.images.reshape(6, -1)
    d = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert d[~np.eye(6, dtype=bool)].min() > 0.01


def test_masks_match_labels_and_lie_inside_lungs(ds):
    for f in ("opacity", "effusion"):
        present = ds.masks[f].any(axis=(1, 2))
        np.testing.assert_array_equal(present, ds.labels[f].to_numpy() == 1)
        assert (ds.masks[f] <= ds.anatomy["lungs"]).all(), f"{f} mask leaves the lung fields"
        assert ds.masks[f][present].sum(axis=(1, 2)).min() >= 10  # not a speck
    card = ds.labels["cardiomegaly"].to_numpy() == 1
    np.testing.assert_array_equal(ds.masks["cardiomegaly"][card], ds.anatomy["heart"][card])
    assert not ds.masks["cardiomegaly"][~card].any()
    # effusion sits at the bottom of the lung fields (costophrenic angles)
    rows = np.arange(128)
    for i in np.flatnonzero(ds.labels["effusion"] == 1)[:20]:
        lung_rows = rows[ds.anatomy["lungs"][i].any(axis=1)]
        eff_rows = rows[ds.masks["effusion"][i].any(axis=1)]
        span = lung_rows.max() - lung_rows.min()
        assert eff_rows.mean() > lung_rows.mean() + 0.1 * span and eff_rows.max() >= lung_rows.max() - 0.15 * span


def test_opacity_is_brighter_than_its_surroundings(ds):
    """The lesion is visible as local contrast; the same region in negatives is not."""
    y = ds.labels["opacity"].to_numpy()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def contrast(img, mask, lungs):
        ring = ndimage.binary_dilation(mask, iterations=5) & ~mask & lungs
        return img[mask].mean() - img[ring].mean()

    c_pos = [contrast(ds.images[i], ds.masks["opacity"][i], ds.anatomy["lungs"][i]) for i in pos]
    c_neg = []
    for j, i in zip(neg, pos):  # the positive's lesion region transplanted into a negative
        region = ds.masks["opacity"][i] & ds.anatomy["lungs"][j]
        if region.sum() >= 10:
            c_neg.append(contrast(ds.images[j], region, ds.anatomy["lungs"][j]))
    assert np.median(c_pos) > 0.04
    auc = roc_auc_score([1] * len(c_pos) + [0] * len(c_neg), c_pos + c_neg)
    assert auc > 0.9, auc
    # not trivial: the global brightness alone does not give the label away
    assert roc_auc_score(y, ds.images.mean(axis=(1, 2))) < 0.7


def test_opacity_contrast_scales_the_lesion_and_nothing_else():
    kw = dict(findings=("opacity",), prevalence=1.0, size=64, seed=3)
    base, strong = make_synthetic_cxr(12, **kw), make_synthetic_cxr(12, opacity_contrast=3.0, **kw)
    np.testing.assert_array_equal(base.masks["opacity"], strong.masks["opacity"])  # same lesions, same places
    pd.testing.assert_frame_equal(base.labels, strong.labels)
    np.testing.assert_allclose(strong.params["opacity_amplitude"], 3.0 * base.params["opacity_amplitude"])

    def contrast(ds, i):
        m = ds.masks["opacity"][i]
        ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m) & ds.anatomy["lungs"][i]
        return ds.images[i][m].mean() - ds.images[i][ring].mean()

    gain = [contrast(strong, i) - contrast(base, i) for i in range(12) if base.masks["opacity"][i].sum() >= 10]
    assert len(gain) >= 8 and min(gain) > 0.05, gain
    # outside the (blurred) lesion the images are the same
    far = ~ndimage.binary_dilation(base.masks["opacity"] | strong.masks["opacity"], iterations=6)
    assert np.abs(base.images - strong.images)[far].max() < 0.05
    with pytest.raises(ValueError, match="opacity_contrast"):
        make_synthetic_cxr(2, size=64, opacity_contrast=-1.0)


def test_cardiomegaly_raises_cardiothoracic_ratio(ds):
    card = ds.labels["cardiomegaly"].to_numpy() == 1
    ctr = cardiothoracic_ratio(ds.anatomy["heart"], ds.anatomy["lungs"])
    assert ctr.shape == (200,) and not np.isnan(ctr).any()
    assert np.mean(ctr[card] > 0.5) > 0.95 and np.mean(ctr[~card] < 0.5) > 0.95
    assert ctr[card].mean() - ctr[~card].mean() > 0.12
    # and in the pixels: the enlarged heart covers more of the lung fields, so they are brighter
    lung_mean = np.array([ds.images[i][ds.anatomy["lungs"][i]].mean() for i in range(200)])
    assert roc_auc_score(card, lung_mean) > 0.7
    single = cardiothoracic_ratio(ds.anatomy["heart"][0], ds.anatomy["lungs"][0])
    assert single == pytest.approx(ctr[0])
    with pytest.raises(ValueError, match="same shape"):
        cardiothoracic_ratio(ds.anatomy["heart"][0], ds.anatomy["lungs"][:2])


def test_site_effects_change_intensity_statistics():
    a = make_synthetic_cxr(30, size=128, site="A", seed=5)
    b = make_synthetic_cxr(30, size=128, site="B", seed=5)  # same patients, other scanner
    c = make_synthetic_cxr(30, size=128, site="C", seed=5)

    def noise(ds):  # in the flat air beside the body, away from the markers
        return np.median(ds.images[:, 40:90, :4].std(axis=(1, 2)))

    def lung_mean(ds):
        return np.array([im[lu].mean() for im, lu in zip(ds.images, ds.anatomy["lungs"])])

    assert noise(b) > 1.5 * noise(a)
    # paired, patient by patient: B's flatter contrast brightens the lungs, C's harder one darkens them
    assert np.mean(lung_mean(b) > lung_mean(a) + 0.01) > 0.9
    assert np.mean(lung_mean(c) < lung_mean(a) - 0.01) > 0.9
    assert (a.labels["site"] == "A").all() and (b.labels["site"] == "B").all()
    assert set(a.labels["image_id"]).isdisjoint(b.labels["image_id"])
    assert (b.labels["view"] == "AP").mean() > (a.labels["view"] == "AP").mean()
    # the burned-in side marker sits in the site's corner: top-right for A, top-left for B
    s, glyph = 128 // 6, np.float32(0.97)  # glyph pixels are burned in after the noise, exactly

    def has_marker(images):
        return (images == glyph).any(axis=(1, 2))

    assert has_marker(a.images[:, :s, -s:]).all() and not has_marker(a.images[:, :s, :s]).any()
    assert has_marker(b.images[:, :s, :s]).all() and not has_marker(b.images[:, :s, -s:]).any()


def test_custom_site_profile_and_validation():
    site = SiteProfile("Z", gamma=2.0, noise=0.0, blur=0.0, marker_corner="bottom-left", shortcut_corner="top-left")
    ds = make_synthetic_cxr(3, size=64, site=site, seed=0, findings=["effusion"], prevalence={"effusion": 1.0})
    assert ds.site is site and list(ds.masks) == ["effusion"] and ds.labels["effusion"].tolist() == [1, 1, 1]
    assert ds.labels["image_id"].str.startswith("Z").all()
    with pytest.raises(ValueError, match="unknown site"):
        make_synthetic_cxr(2, site="Q")
    with pytest.raises(ValueError, match="findings"):
        make_synthetic_cxr(2, findings=("pneumothorax",))
    with pytest.raises(ValueError, match="missing"):
        make_synthetic_cxr(2, prevalence={"opacity": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_synthetic_cxr(2, prevalence=1.5)
    with pytest.raises(ValueError, match="size"):
        make_synthetic_cxr(2, size=8)
    with pytest.raises(ValueError, match="must differ"):
        SiteProfile("X", marker_corner="top-left", shortcut_corner="top-left")
    with pytest.raises(ValueError, match="not among findings"):
        make_synthetic_cxr(2, findings=("opacity",), marker_shortcut="effusion")


def test_prevalence_dict_controls_each_finding():
    ds = make_synthetic_cxr(40, size=48, seed=1, prevalence={"opacity": 1.0, "effusion": 0.0, "cardiomegaly": 0.5})
    assert ds.labels["opacity"].all() and not ds.labels["effusion"].any()
    assert ds.masks["opacity"].any(axis=(1, 2)).all() and not ds.masks["effusion"].any()
    assert 0 < ds.labels["cardiomegaly"].mean() < 1


def test_marker_shortcut_correlates_with_label(ds):
    y = ds.labels["opacity"].to_numpy()
    marker = ds.masks["marker"].any(axis=(1, 2))
    np.testing.assert_array_equal(marker, ds.params["marker"].to_numpy())
    assert np.corrcoef(marker, y)[0, 1] > 0.5
    # the marker is burned in: bright pixels inside its rectangle, bottom-left for site A
    i = int(np.flatnonzero(marker)[0])
    assert ds.images[i][ds.masks["marker"][i]].max() > 0.9
    rows, cols = np.nonzero(ds.masks["marker"][i])
    assert rows.min() > 64 and cols.max() < 64
    assert "marker" not in make_synthetic_cxr(2, size=48, seed=0).masks


def test_images_per_patient_share_patient_and_labels():
    ds = make_synthetic_cxr(10, size=64, seed=3, images_per_patient=3)
    assert ds.labels["patient_id"].nunique() == 4  # 3 + 3 + 3 + 1
    assert ds.labels["image_id"].is_unique
    per_patient = ds.labels.groupby("patient_id")[list(FINDINGS)].nunique()
    assert (per_patient == 1).all().all()
    assert not np.array_equal(ds.images[0], ds.images[1])  # follow-ups differ in pose and noise


# --- writers -------------------------------------------------------------------
def test_labels_csv_and_masks_npz(written):
    small, csv = written
    df = pd.read_csv(csv)
    assert list(df.columns) == ["path", "png_path", "patient_id", "image_id", *FINDINGS, "site", "sex", "age", "view"]
    assert df["path"].str.endswith(".dcm").all() and df["png_path"].str.endswith(".png").all()
    assert all((csv.parent / p).is_file() for p in [*df["path"], *df["png_path"]])
    np.testing.assert_array_equal(df[list(FINDINGS)].to_numpy(), small.labels[list(FINDINGS)].to_numpy())
    ids, masks = load_masks(csv.parent)
    assert list(ids) == list(df["image_id"])
    assert set(masks) == set(small.masks)
    for k in masks:
        np.testing.assert_array_equal(masks[k], small.masks[k])


def test_load_masks_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_dataset"):
        load_masks(tmp_path)
    np.savez(tmp_path / "masks.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="not a cxr_embed synthetic masks file"):
        load_masks(tmp_path / "masks.npz")


def test_dicom_files_are_valid_and_monochrome1_is_inverted(written):
    small, csv = written
    df = pd.read_csv(csv)
    for i in (0, 5):
        path = csv.parent / df["path"][i]
        with open(path, "rb") as fh:
            assert fh.read(132)[128:] == b"DICM"
        d = pydicom.dcmread(path)
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.Modality == "DX" and d.BodyPartExamined == "CHEST" and d.PhotometricInterpretation == "MONOCHROME1"
        assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 12, 11, 0)
        assert (d.Rows, d.Columns) == (128, 128) and d.SamplesPerPixel == 1
        assert d.PatientID == df["patient_id"][i] and d.PatientSex == df["sex"][i]
        assert d.PatientAge == f"{df['age'][i]:03d}Y" and d.ViewPosition == df["view"][i]
        assert float(d.PixelSpacing[0]) > 0 and float(d.ImagerPixelSpacing[0]) > 0
        assert "WindowCenter" in d and "WindowWidth" in d and "RescaleSlope" in d and "RescaleIntercept" in d
        expected = np.round(small.images[i] * 4095).astype(np.uint16)
        np.testing.assert_array_equal(d.pixel_array, 4095 - expected)  # stored inverted
    uids = {pydicom.dcmread(csv.parent / p).SOPInstanceUID for p in df["path"]}
    assert len(uids) == len(df)


def test_dicom_reads_back_as_rendered(written):
    """Through the library's own reader: MONOCHROME1 comes back as displayed, not inverted."""
    read_image = pytest.importorskip("cxr_embed.io.images").read_image
    small, csv = written
    df = pd.read_csv(csv)
    for i in range(3):
        image, meta = read_image(csv.parent / df["path"][i])
        assert image.shape == (128, 128)
        assert np.corrcoef(image.ravel(), small.images[i].ravel())[0, 1] > 0.99
        assert np.abs(image - small.images[i]).max() < 0.01
        assert meta["view_position"] == df["view"][i]


def test_png_round_trip(written):
    small, csv = written
    df = pd.read_csv(csv)
    for i in (0, 7):
        png = np.asarray(Image.open(csv.parent / df["png_path"][i]))
        assert png.dtype == np.uint8 and png.shape == (128, 128)
        assert np.abs(png / 255.0 - small.images[i]).max() <= 0.5 / 255 + 1e-6


def test_labels_csv_loads_as_manifest(written):
    manifest = pytest.importorskip("cxr_embed.io.manifest")
    _, csv = written
    df = manifest.load_manifest(csv)
    assert df.attrs["labels"] == list(FINDINGS)
    assert {"sex", "age", "view", "site"} <= set(df.columns)


def test_make_demo_sites(tmp_path):
    paths = make_demo_sites(tmp_path, n_source=4, n_target=3, size=64, seed=2)
    src, tgt = pd.read_csv(paths["source"]), pd.read_csv(paths["target"])
    assert len(src) == 4 and len(tgt) == 3
    assert (src["site"] == "A").all() and (tgt["site"] == "B").all()
    d_src = pydicom.dcmread(paths["source"].parent / src["path"][0])
    d_tgt = pydicom.dcmread(paths["target"].parent / tgt["path"][0])
    assert d_src.PhotometricInterpretation == "MONOCHROME2" and d_src.Modality == "DX"
    assert d_tgt.PhotometricInterpretation == "MONOCHROME1" and d_tgt.Modality == "CR"
    assert d_tgt.SOPClassUID == pydicom.uid.ComputedRadiographyImageStorage
    assert SITES["B"].monochrome1 and not SITES["A"].monochrome1
    again = make_demo_sites(tmp_path / "again", n_source=4, n_target=3, size=64, seed=2)
    assert (paths["source"].parent / src["path"][0]).read_bytes() == (again["source"].parent / src["path"][0]).read_bytes()


def test_write_dataset_rejects_bad_arguments(tmp_path):
    ds = make_synthetic_cxr(2, size=48, seed=0)
    with pytest.raises(ValueError, match="format"):
        write_dataset(ds, tmp_path, format="jpeg")
    with pytest.raises(TypeError, match="SyntheticCXR"):
        write_dataset(ds.images, tmp_path)
