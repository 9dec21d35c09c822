"""The published label tables in ../shared/data/label_tables, loaded with file checks off.

Every label count, the number of images and of patients is compared with an independent pandas
computation written here. Skipped when the folder is absent (a fresh clone).
"""
from __future__ import annotations

import ast
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from cxr_embed.io.manifest import CHEXPERT_LABELS, GOOGLE2019_LABELS, NIH_LABELS, load_manifest, summarize_manifest

TABLES = SHARED_DATA / "label_tables"
pytestmark = pytest.mark.realdata


def _table(name: str):
    path = TABLES / name
    if not path.is_file():
        pytest.skip(f"real label table {path} is absent (only present beside the development checkout)")
    return path


def _load(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_manifest(path, check_files=False, **kwargs)


def _counts(values: pd.Series) -> dict:
    v = pd.to_numeric(values, errors="coerce")
    return {"positive": int((v == 1).sum()), "negative": int((v == 0).sum()), "uncertain": int((v == -1).sum()),
            "missing": int(v.isna().sum())}


def _check_nih(df: pd.DataFrame, raw: pd.DataFrame) -> dict:
    s = summarize_manifest(df)
    assert s["n_images"] == len(raw) == raw["Image Index"].nunique()
    assert s["n_patients"] == raw["Patient ID"].nunique()
    dummies = raw["Finding Labels"].str.get_dummies("|")
    assert len(dummies.columns) == len(NIH_LABELS)
    for name in NIH_LABELS:  # "No Finding" -> no_finding, "Pleural_Thickening" -> pleural_thickening
        column = next(c for c in dummies.columns if c.lower().replace(" ", "_") == name)
        pos = int(dummies[column].sum())
        assert s["labels"][name] == {"positive": pos, "negative": len(raw) - pos, "uncertain": 0, "missing": 0}
    assert s["views"] == raw["View Position"].value_counts().sort_index().to_dict()
    return s


def test_nih_data_entry_2017_v2020():
    path = _table("Data_Entry_2017_v2020.csv.gz")
    raw = pd.read_csv(path, dtype=str)
    df = _load(path)
    assert df.attrs["format"] == "nih" and df.attrs["labels"] == list(NIH_LABELS)
    s = _check_nih(df, raw)
    assert (s["n_images"], s["n_patients"]) == (112120, 30805)
    assert s["sex"] == raw["Patient Gender"].value_counts().sort_index().to_dict()


def test_google2019_nih_labels():
    path = _table("google2019_nih-chest-xray-labels.csv.gz")
    raw = pd.read_csv(path, dtype=str)
    df = _load(path)
    assert df.attrs["format"] == "nih"
    assert df.attrs["labels"] == list(NIH_LABELS) + list(GOOGLE2019_LABELS.values())
    s = _check_nih(df, raw)
    assert (s["n_images"], s["n_patients"]) == (4376, 1695)
    for column, name in GOOGLE2019_LABELS.items():
        yes, no = int((raw[column] == "YES").sum()), int((raw[column] == "NO").sum())
        assert s["labels"][name] == {"positive": yes, "negative": no, "uncertain": 0,
                                     "missing": len(raw) - yes - no}
    assert df["google2019_set"].value_counts().to_dict() == raw["Set Id"].value_counts().to_dict()


def test_chexpert_train():
    path = _table("chexpert_train.csv.gz")
    raw = pd.read_csv(path)
    df = _load(path)
    s = summarize_manifest(df)
    assert df.attrs["format"] == "chexpert" and df.attrs["labels"] == list(CHEXPERT_LABELS.values())
    patients = raw["Path"].str.extract(r"/(patient\d+)/", expand=False)
    assert (s["n_images"], s["n_patients"]) == (len(raw), patients.nunique()) == (223414, 64540)
    for column, name in CHEXPERT_LABELS.items():
        assert s["labels"][name] == _counts(raw[column]), name
    assert s["frontal_lateral"] == raw["Frontal/Lateral"].str.lower().value_counts().sort_index().to_dict()
    ll = (raw["Frontal/Lateral"] == "Frontal") & raw["AP/PA"].isin(["LL", "RL"])
    assert int(df["view_conflict"].sum()) == int(ll.sum()) > 0


def test_rsna_pneumonia_with_dicom_headers():
    path = _table("kaggle_stage_2_train_labels.csv.zip")
    headers = _table("kaggle_stage_2_train_images_dicom_headers.csv.gz")
    raw = pd.read_csv(path)
    hdr = pd.read_csv(headers, dtype=str)
    df = _load(path)
    s = summarize_manifest(df)
    per_image = raw.groupby("patientId")["Target"].max()
    assert (s["n_images"], s["n_patients"]) == (per_image.size, raw["patientId"].nunique()) == (26684, 26684)
    assert s["labels"]["pneumonia"] == {"positive": int(per_image.sum()), "negative": int((per_image == 0).sum()),
                                        "uncertain": 0, "missing": 0}
    assert int(df["n_boxes"].sum()) == int(raw["x"].notna().sum())
    assert s["sex"] == hdr["PatientSex"].value_counts().sort_index().to_dict()
    assert s["views"] == hdr["ViewPosition"].value_counts().sort_index().to_dict()
    assert s["age"]["missing"] == int((pd.to_numeric(hdr["PatientAge"]) > 120).sum())


def test_siim_pneumothorax_rle():
    path = _table("siim-pneumothorax-train-rle.csv.gz")
    raw = pd.read_csv(path, dtype=str)
    raw.columns = [c.strip() for c in raw.columns]
    df = _load(path)
    s = summarize_manifest(df)
    positive = raw.assign(region=raw["EncodedPixels"].str.strip() != "-1").groupby("ImageId")["region"].any()
    assert (s["n_images"], s["n_patients"]) == (positive.size, positive.size) == (12047, 12047)
    assert s["labels"]["pneumothorax"] == {"positive": int(positive.sum()), "negative": int((~positive).sum()),
                                           "uncertain": 0, "missing": 0}
    assert int(df["n_regions"].sum()) == int((raw["EncodedPixels"].str.strip() != "-1").sum())


def _padchest_reference(raw: pd.DataFrame) -> tuple[dict, int]:
    """label -> number of images carrying it, and the number of images without labels."""
    counts: dict[str, int] = {}
    unlabelled = int(raw["Labels"].isna().sum())
    for cell, n in raw["Labels"].value_counts().items():  # each distinct cell once
        found = {re.sub(r"[^0-9a-z]+", "_", t.strip().lower()).strip("_") for t in ast.literal_eval(cell) if t.strip()}
        if not found:
            unlabelled += n
        for name in found:
            counts[name] = counts.get(name, 0) + n
    return counts, unlabelled


@pytest.fixture(scope="module")
def padchest():
    path = _table("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    raw = pd.read_csv(path, usecols=["ImageID", "PatientID", "Labels", "Projection"], dtype=str)
    return path, raw, *_padchest_reference(raw)


def test_padchest_images_patients_and_three_findings(padchest):  # about 2.5 s of CPU each
    path, raw, counts, unlabelled = padchest
    df = _load(path, labels=["normal", "pneumonia", "cardiomegaly"])
    s = summarize_manifest(df)
    assert (s["n_images"], s["n_patients"]) == (len(raw), raw["PatientID"].nunique()) == (160861, 67625)
    for name in ("normal", "pneumonia", "cardiomegaly"):
        assert s["labels"][name] == {"positive": counts[name], "negative": len(raw) - unlabelled - counts[name],
                                     "uncertain": 0, "missing": unlabelled}
    assert s["views"] == raw["Projection"].str.upper().value_counts().sort_index().to_dict()


def test_padchest_every_finding(padchest):
    path, raw, counts, unlabelled = padchest
    df = _load(path)
    s = summarize_manifest(df)
    assert sorted(s["labels"]) == sorted(counts) == df.attrs["labels"]
    for name, pos in counts.items():
        assert s["labels"][name] == {"positive": pos, "negative": len(raw) - unlabelled - pos, "uncertain": 0,
                                     "missing": unlabelled}, name
    assert df[df.attrs["labels"]].dtypes.eq(np.float32).all()
