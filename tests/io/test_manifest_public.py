"""Tests of the public-dataset loaders of cxr_embed.io.manifest on small hand-written tables.

Every format (NIH + Google 2019, CheXpert folder, PadChest, MIMIC-CXR-JPG, RSNA, VinDr-CXR,
SIIM-ACR) is written here in its published layout, so these run on a fresh clone.
"""
from __future__ import annotations

import gzip
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_embed.exceptions import ManifestError, MissingFilesError
from cxr_embed.io.manifest import (CHEXPERT_LABELS, FRONTAL_VIEWS, GOOGLE2019_LABELS, LATERAL_VIEWS, NIH_LABELS,
                                   load_manifest, summarize_manifest)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really an image")
    return path


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_manifest(*args, **kwargs)


# --------------------------------------------------------------------------- writers, one per format
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def write_nih(folder: Path, extra: dict | None = None, google: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("00000013_008.png", "No Finding", 8, 13, 60, "M", "AP", "NO", "NO", "YES", "NO", "test"),
            ("00000013_026.png", "Cardiomegaly|Emphysema", 26, 13, 57, "M", "AP", "NO", "YES", "NO", "NO", "test"),
            ("00000032_002.png", "Pneumothorax", 2, 32, 55, "F", "PA", "YES", "", "YES", "YES", "val")]
    df = pd.DataFrame([r[:7] + (2500, 2048, 0.168, 0.168) + r[7:] for r in rows],
                      columns=NIH_HEADER.split(",") + list(GOOGLE2019_LABELS) + ["Set Id"])
    if not google:
        df = df.drop(columns=list(GOOGLE2019_LABELS) + ["Set Id"])
    for k, v in (extra or {}).items():
        df[k] = v
    for name in df["Image Index"]:
        _touch(folder / "images_001" / "images" / name)
    path = folder / ("google2019_nih-chest-xray-labels.csv.gz" if google else "Data_Entry_2017_v2020.csv.gz")
    df.to_csv(path, index=False)
    return path


def write_chexpert(base: Path, split: str, rows, extra: dict | None = None) -> Path:
    """CheXpert-v1.0-small/<split>.csv with images; rows: (patient, study, view, Frontal/Lateral, AP/PA, findings)."""
    base.mkdir(parents=True, exist_ok=True)
    records = []
    for patient, study, view, fl, appa, findings in rows:
        rel = f"{split}/patient{patient:05d}/study{study}/view{view}_{fl.lower()}.jpg"
        rec = {"Path": f"CheXpert-v1.0-small/{rel}", "Sex": "Female", "Age": 70, "Frontal/Lateral": fl,
               "AP/PA": appa}
        rec.update({name: findings.get(name, "") for name in CHEXPERT_LABELS})
        records.append(rec)
        _touch(base / rel)
    df = pd.DataFrame(records)
    for k, v in (extra or {}).items():
        df[k] = v
    df.to_csv(base / f"{split}.csv", index=False)
    return base / f"{split}.csv"


PADCHEST_HEADER = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                   "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
                   "Modality_DICOM", "Manufacturer_DICOM", "Rows_DICOM", "ReportID", "Report", "MethodLabel",
                   "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]


def write_padchest(folder: Path, labels=None, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels or ["['normal']", "[' pneumonia', 'COPD signs', 'pneumonia']", None, "['']"]
    rows = []
    for i, lab in enumerate(labels):
        rows.append([i, f"img{i}_abc.png", i % 2, "20150914", f"study{i // 2}", f"pat{i // 2}", "1930.0",
                     "FM"[i % 2], "POSTEROANTERIOR" if i % 2 else "nan", ["PA", "L", "AP_horizontal", "COSTAL"][i % 4],
                     "Manual review of DICOM fields", "No", "CR", "Philips", 2000, 4765777 + i,
                     " sin hallazg patolog ,\nedad pacient .", "Physician", lab, "['loc basal']",
                     "[['normal']]", "[]", "[]"])
        _touch(folder / str(i % 2) / f"img{i}_abc.png")
    df = pd.DataFrame(rows, columns=PADCHEST_HEADER)
    for k, v in (extra or {}).items():
        df[k] = v
    path = folder / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    df.to_csv(path, index=False)
    return path


def write_mimic(folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = pd.DataFrame({
        "dicom_id": ["02aa804e-bde0afdd", "174413ec-4ec4c1f7", "2a2277a9-b0ded155", "68b5c4b1-227d0485"],
        "subject_id": [10000032, 10000032, 10000032, 11000011],
        "study_id": [50414267, 50414267, 53189527, 59999999],
        "PerformedProcedureStepDescription": ["CHEST (PA AND LAT)"] * 4,
        "ViewPosition": ["PA", "LATERAL", "AP", "AP AXIAL"],
        "Rows": [3056, 3056, 3056, 2544], "Columns": [2544, 2544, 2544, 3056],
        "StudyDate": [21800506] * 4, "StudyTime": [213014.531] * 4,
        "ProcedureCodeSequence_CodeMeaning": ["CHEST (PA AND LAT)"] * 4,
        "ViewCodeSequence_CodeMeaning": ["postero-anterior", "lateral", "antero-posterior", "antero-posterior"],
        "PatientOrientationCodeSequence_CodeMeaning": ["Erect"] * 4})
    for k, v in (extra or {}).items():
        meta[k] = v
    meta.to_csv(folder / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    chexpert = pd.DataFrame({"subject_id": [10000032, 10000032], "study_id": [50414267, 53189527],
                             "Atelectasis": [np.nan, 1.0], "Edema": [-1.0, 0.0], "No Finding": [1.0, np.nan]})
    chexpert.to_csv(folder / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    negbio = chexpert.assign(Edema=[1.0, 1.0])
    negbio.to_csv(folder / "mimic-cxr-2.0.0-negbio.csv.gz", index=False)
    pd.DataFrame({"dicom_id": meta["dicom_id"], "study_id": meta["study_id"], "subject_id": meta["subject_id"],
                  "split": ["train", "train", "validate", "test"]}).to_csv(folder / "mimic-cxr-2.0.0-split.csv.gz",
                                                                          index=False)
    for d, p, s in zip(meta["dicom_id"], meta["subject_id"], meta["study_id"]):
        _touch(folder / "files" / f"p{str(p)[:2]}" / f"p{p}" / f"s{s}" / f"{d}.jpg")
    return folder / "mimic-cxr-2.0.0-metadata.csv.gz"


def write_rsna(folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    labels = pd.DataFrame({"patientId": ["0004cfab", "00436515", "00436515", "00704310"],
                           "x": [np.nan, 562.0, 222.0, np.nan], "y": [np.nan, 152.0, 155.0, np.nan],
                           "width": [np.nan, 256.0, 198.0, np.nan], "height": [np.nan, 453.0, 501.0, np.nan],
                           "Target": [0, 1, 1, 0]})
    for k, v in (extra or {}).items():
        labels[k] = v
    labels.to_csv(folder / "stage_2_train_labels.csv", index=False)
    pd.DataFrame({"patientId": labels["patientId"],
                  "class": ["No Lung Opacity / Not Normal", "Lung Opacity", "Lung Opacity", "Normal"]}).to_csv(
        folder / "stage_2_detailed_class_info.csv", index=False)
    pd.DataFrame({"Filename": ["0004cfab.dcm", "00436515.dcm", "00704310.dcm"],
                  "PatientAge": ["51", "48", "155"], "PatientSex": ["F", "F", "M"],
                  "ViewPosition": ["PA", "AP", "AP"], "Modality": ["CR"] * 3}).to_csv(
        folder / "stage_2_train_dicom_headers.csv", index=False)
    for i in ("0004cfab", "00436515", "00704310"):
        _touch(folder / "stage_2_train_images" / f"{i}.dcm")
    return folder / "stage_2_train_labels.csv"


def write_vindr(folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("imgA", "Cardiomegaly", "R1", 1), ("imgA", "Cardiomegaly", "R2", 1), ("imgA", "No finding", "R3", 0),
            ("imgB", "Aortic enlargement", "R1", 1), ("imgB", "Aortic enlargement", "R1", 1),
            ("imgB", "No finding", "R2", 0), ("imgB", "No finding", "R3", 0),
            ("imgC", "No finding", "R1", 0), ("imgC", "No finding", "R2", 0), ("imgC", "No finding", "R4", 0)]
    df = pd.DataFrame([{"image_id": i, "class_name": c, "rad_id": r,
                        "x_min": 10.0 if box else np.nan, "y_min": 10.0 if box else np.nan,
                        "x_max": 50.0 if box else np.nan, "y_max": 60.0 if box else np.nan} for i, c, r, box in rows])
    for k, v in (extra or {}).items():
        df[k] = v
    for i in ("imgA", "imgB", "imgC"):
        _touch(folder / "train" / f"{i}.dicom")
    df.to_csv(folder / "annotations_train.csv", index=False)
    return folder / "annotations_train.csv"


def write_siim(folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = ["1.2.276.0.1", "1.2.276.0.2", "1.2.276.0.2", "1.2.276.0.3"]
    df = pd.DataFrame({"ImageId": ids, " EncodedPixels": ["-1", "557374 2 1015 8", "430000 5 1019 3", " -1"]})
    for k, v in (extra or {}).items():
        df[k] = v
    for j, i in enumerate(dict.fromkeys(ids)):
        _touch(folder / "dicom-images-train" / f"1.2.276.0.{j}.study" / f"1.2.276.0.{j}.series" / f"{i}.dcm")
    df.to_csv(folder / "train-rle.csv", index=False)
    return folder / "train-rle.csv"


# --------------------------------------------------------------------------- NIH and Google 2019
def test_nih_from_a_folder_holding_only_the_csv_gz(tmp_path):
    csv = write_nih(tmp_path)
    df = load_manifest(tmp_path)
    assert df.attrs["format"] == "nih" and df.attrs["source"] == str(csv) and df.attrs["labels"] == list(NIH_LABELS)
    assert df["path"][2] == str(tmp_path / "images_001" / "images" / "00000032_002.png")
    assert df.loc[1, ["cardiomegaly", "emphysema", "no_finding"]].tolist() == [1.0, 1.0, 0.0]


def test_google2019_table_loads_with_its_own_label_columns(tmp_path):
    csv = write_nih(tmp_path, google=True)
    df = load_manifest(csv)
    assert df.attrs["format"] == "nih"
    assert df.attrs["labels"] == list(NIH_LABELS) + list(GOOGLE2019_LABELS.values())
    assert df["pneumothorax"].tolist() == [0.0, 0.0, 1.0]  # the NIH label, not replaced by Google's column
    assert df["google2019_pneumothorax"].tolist()[:2] == [0.0, 1.0] and np.isnan(df["google2019_pneumothorax"][2])
    assert df["google2019_airspace_opacity"].tolist() == [1.0, 0.0, 1.0]
    assert df["google2019_set"].tolist() == ["test", "test", "val"]
    s = summarize_manifest(df)
    assert s["labels"]["google2019_fracture"] == {"positive": 1, "negative": 2, "uncertain": 0, "missing": 0}


def test_google2019_bad_value_names_column_and_line(tmp_path):
    csv = write_nih(tmp_path, google=True)
    df = pd.read_csv(csv, dtype=str)
    df.loc[1, "Fracture"] = "MAYBE"
    df.to_csv(csv, index=False)
    with pytest.raises(ManifestError, match=r"'Fracture' should hold YES or NO; found \['MAYBE'\] on CSV line\(s\) \[3\]"):
        load_manifest(csv, check_files=False)


# --------------------------------------------------------------------------- CheXpert
def _chexpert_folder(tmp_path: Path, extra=None) -> Path:
    base = tmp_path / "CheXpert-v1.0-small"
    write_chexpert(base, "train", [(1, 1, 1, "Frontal", "AP", {"No Finding": 1}),
                                   (2, 1, 1, "Frontal", "LL", {"Edema": -1}),
                                   (2, 1, 2, "Lateral", "", {"Edema": -1})], extra)
    write_chexpert(base, "valid", [(64541, 1, 1, "Frontal", "PA", {"Edema": 1, "Cardiomegaly": 0})],
                   None if extra is None else {k: v[:1] for k, v in extra.items()})
    return base


def test_chexpert_folder_reads_train_and_valid_with_split(tmp_path):
    base = _chexpert_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"1 image\(s\) whose view code contradicts.*frontal \+ LL"):
        df = load_manifest(base)
    assert df.attrs["format"] == "chexpert" and df.attrs["source"] == str(base)
    assert df.attrs["root"] == str(tmp_path)
    assert df["split"].tolist() == ["train", "train", "train", "valid"]
    assert df["patient_id"].tolist() == ["patient00001", "patient00002", "patient00002", "patient64541"]
    assert df["image_id"][3] == "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal"
    assert df["view_conflict"].tolist() == [False, True, False, False]
    assert df["frontal_lateral"].tolist() == ["frontal", "frontal", "lateral", "frontal"]
    assert df["edema"].tolist() == [np.nan, -1.0, -1.0, 1.0] or np.isnan(df["edema"][0])
    assert list(df.columns[:3 + len(df.attrs["labels"])]) == ["image_id", "path", "patient_id", *df.attrs["labels"]]
    assert _quiet(base, format="chexpert").attrs["source"] == str(base)


# --------------------------------------------------------------------------- PadChest
def test_padchest_labels_views_age_and_unlabelled_rows(tmp_path):
    csv = write_padchest(tmp_path)
    with pytest.warns(UserWarning, match=r"2 image\(s\) have no labels"):
        df = load_manifest(tmp_path)
    assert df.attrs["format"] == "padchest" and df.attrs["source"] == str(csv)
    assert df.attrs["labels"] == ["copd_signs", "normal", "pneumonia"]  # ' pneumonia' and 'pneumonia' are one
    assert df["image_id"].tolist() == [f"img{i}_abc" for i in range(4)]
    assert df["path"][1] == str(tmp_path / "1" / "img1_abc.png")
    assert df["patient_id"].tolist() == ["pat0", "pat0", "pat1", "pat1"]
    np.testing.assert_array_equal(df["pneumonia"], [0.0, 1.0, np.nan, np.nan])
    np.testing.assert_array_equal(df["normal"], [1.0, 0.0, np.nan, np.nan])
    assert df["view"].tolist() == ["PA", "L", "AP_HORIZONTAL", "COSTAL"]
    assert df["frontal_lateral"].tolist()[:3] == ["frontal", "lateral", "frontal"] and pd.isna(df["frontal_lateral"][3])
    assert df["age"].tolist() == [85.0] * 4 and df["sex"].tolist() == ["F", "M", "F", "M"]
    assert df["label_method"][0] == "Physician" and df["localizations"][0] == "['loc basal']"
    assert "report" not in df.columns and "labelcuis" not in df.columns  # free text is not loaded
    sub = _quiet(csv, labels=["pneumonia"])
    assert sub.attrs["labels"] == ["pneumonia"] and "normal" not in sub.columns
    with pytest.raises(ManifestError, match=r"labels= names finding\(s\) \['pneumothorax'\]"):
        _quiet(csv, labels=["pneumothorax"])


def test_padchest_labels_are_parsed_never_evaluated(tmp_path):
    csv = write_padchest(tmp_path, labels=["['normal']", "__import__('os').system('touch HACKED')"])
    with pytest.raises(ManifestError, match=r"'Labels' should hold a list of findings.*__import__.*\[3\]"):
        load_manifest(csv, check_files=False)
    assert not (tmp_path / "HACKED").exists() and not Path("HACKED").exists()
    csv = write_padchest(tmp_path, labels=["['normal']", '["it\'s odd", "normal"]'])
    assert _quiet(csv, check_files=False).attrs["labels"] == ["it_s_odd", "normal"]


# --------------------------------------------------------------------------- MIMIC-CXR-JPG
def test_mimic_metadata_joined_with_chexpert_labels(tmp_path):
    meta = write_mimic(tmp_path)
    with pytest.warns(UserWarning, match=r"1 image\(s\) belong to studies without a row"):
        df = load_manifest(tmp_path)  # the folder: metadata + chexpert labels, not negbio
    assert df.attrs["format"] == "mimic" and df.attrs["source"] == str(meta)
    assert df.attrs["labels"] == ["no_finding", "edema", "atelectasis"]
    assert df["image_id"][0] == "p10/p10000032/s50414267/02aa804e-bde0afdd"
    assert df["path"][0] == str(tmp_path / "files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg")
    assert df["patient_id"].tolist() == ["10000032"] * 3 + ["11000011"]
    np.testing.assert_array_equal(df["edema"], [-1.0, -1.0, 0.0, np.nan])
    np.testing.assert_array_equal(df["atelectasis"], [np.nan, np.nan, 1.0, np.nan])
    assert df["split"].tolist() == ["train", "train", "validate", "test"]
    assert df["study_id"][2] == "53189527" and df["view"].tolist() == ["PA", "LATERAL", "AP", "AP AXIAL"]
    assert df["frontal_lateral"].tolist() == ["frontal", "lateral", "frontal", "frontal"]
    assert "sex" not in df.columns  # MIMIC-CXR-JPG has no sex or age (they are in MIMIC-IV)
    negbio = _quiet(tmp_path / "mimic-cxr-2.0.0-negbio.csv.gz")  # the label table chosen by the path
    assert negbio["edema"].tolist()[:3] == [1.0, 1.0, 1.0]


def test_mimic_label_table_alone_is_explained(tmp_path):
    write_mimic(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(ManifestError, match="lists studies, not images.*metadata"):
        load_manifest(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz")


# --------------------------------------------------------------------------- RSNA
def test_rsna_boxes_aggregated_and_headers_joined(tmp_path):
    table = write_rsna(tmp_path)
    with pytest.warns(UserWarning, match=r"1 age value\(s\) above 120"):
        df = load_manifest(tmp_path)
    assert df.attrs["format"] == "rsna" and df.attrs["source"] == str(table)
    assert df["image_id"].tolist() == ["0004cfab", "00436515", "00704310"]
    assert df["pneumonia"].tolist() == [0.0, 1.0, 0.0] and df["n_boxes"].tolist() == [0, 2, 0]
    assert df["sex"].tolist() == ["F", "F", "M"] and df["view"].tolist() == ["PA", "AP", "AP"]
    assert df["age"].tolist()[:2] == [51.0, 48.0] and np.isnan(df["age"][2])
    assert df["rsna_class"].tolist() == ["No Lung Opacity / Not Normal", "Lung Opacity", "Normal"]
    assert df["path"][1] == str(tmp_path / "stage_2_train_images" / "00436515.dcm")
    assert "x" not in df.columns and df["modality"].tolist() == ["CR"] * 3


# --------------------------------------------------------------------------- VinDr-CXR
def test_vindr_any_and_majority_rules(tmp_path):
    table = write_vindr(tmp_path)
    with pytest.warns(UserWarning, match="VinDr-CXR publishes no patient ids"):
        df = load_manifest(tmp_path)
    assert df.attrs["format"] == "vindr" and df.attrs["rule"] == "any" and df.attrs["source"] == str(table)
    assert df.attrs["labels"][:3] == ["no_finding", "aortic_enlargement", "atelectasis"]
    assert len(df.attrs["labels"]) == 15
    assert (df["patient_id"] == df["image_id"]).all()
    assert df["cardiomegaly"].tolist() == [1.0, 0.0, 0.0]
    assert df["aortic_enlargement"].tolist() == [0.0, 1.0, 0.0]
    assert df["no_finding"].tolist() == [0.0, 0.0, 1.0]
    assert df["n_readers"].tolist() == [3, 3, 3] and df["n_boxes"].tolist() == [2, 2, 0]
    assert df["path"][0] == str(tmp_path / "train" / "imgA.dicom")
    most = _quiet(table, rule="majority")
    assert most.attrs["rule"] == "majority"
    assert most["cardiomegaly"].tolist() == [1.0, 0.0, 0.0]       # 2 of 3 readers
    assert most["aortic_enlargement"].tolist() == [0.0, 0.0, 0.0]  # 1 of 3 (two boxes by one reader)
    assert most["no_finding"].tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ManifestError, match=r"rule='all' is not one of \('any', 'majority'\)"):
        _quiet(table, rule="all")
    with pytest.raises(ManifestError, match="rule= applies to format='vindr' only"):
        load_manifest(write_siim(tmp_path / "s"), rule="any")


# --------------------------------------------------------------------------- SIIM-ACR
def test_siim_regions_aggregated_and_nested_files_found(tmp_path):
    table = write_siim(tmp_path)
    with pytest.warns(UserWarning, match="publishes no patient ids"):
        df = load_manifest(table)
    assert df.attrs["format"] == "siim" and df.attrs["labels"] == ["pneumothorax"]
    assert df["image_id"].tolist() == ["1.2.276.0.1", "1.2.276.0.2", "1.2.276.0.3"]  # DICOM UIDs keep their dots
    assert df["pneumothorax"].tolist() == [0.0, 1.0, 0.0] and df["n_regions"].tolist() == [0, 2, 0]
    assert df["path"][1].endswith("dicom-images-train/1.2.276.0.1.study/1.2.276.0.1.series/1.2.276.0.2.dcm")
    assert all(os.path.isfile(p) for p in df["path"])


# --------------------------------------------------------------------------- extra columns, every loader
_EXTRA = {"path": "/somewhere/else.png", "image_id": "not-the-id"}


@pytest.mark.parametrize("fmt, label, write", [
    ("nih", "pneumonia", lambda d, e: write_nih(d, e)),
    ("nih", "google2019_fracture", lambda d, e: write_nih(d, e, google=True)),
    ("chexpert", "edema", lambda d, e: _chexpert_folder(d, e)),
    ("padchest", "normal", lambda d, e: write_padchest(d, extra=e)),
    ("mimic", "edema", lambda d, e: write_mimic(d, e)),
    ("rsna", "pneumonia", lambda d, e: write_rsna(d, e)),
    ("vindr", "cardiomegaly", lambda d, e: write_vindr(d, e)),
    ("siim", "pneumothorax", lambda d, e: write_siim(d, e)),
])
def test_extra_columns_never_replace_built_columns(tmp_path, fmt, label, write):
    plain = _quiet(write(tmp_path / "plain", None))
    n = 4 if fmt in ("padchest", "chexpert") else {"nih": 3, "mimic": 4, "rsna": 4, "vindr": 10, "siim": 4}[fmt]
    extra = {k: [v] * n for k, v in _EXTRA.items()}
    if fmt == "vindr":  # VinDr's own id column is image_id: the extra one is spelled "Image ID"
        extra["Image ID"] = extra.pop("image_id")
    extra[label] = [7] * n  # a source column named like a label the loader builds
    if fmt == "chexpert":
        extra = {k: v[:3] for k, v in extra.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_manifest(write(tmp_path / "extra", extra))
    assert any("never replacing it" in str(w.message) for w in caught)
    rel = [os.path.relpath(p, tmp_path / "plain") for p in plain["path"]]
    assert [os.path.relpath(p, tmp_path / "extra") for p in df["path"]] == rel
    assert df["image_id"].tolist() == plain["image_id"].tolist()
    np.testing.assert_array_equal(df[label].to_numpy(), plain[label].to_numpy())
    assert df.attrs["labels"] == plain.attrs["labels"]
    assert (df["source_path"] == "/somewhere/else.png").all() and (df["source_image_id"] == "not-the-id").all()
    assert (df[f"source_{label}"].astype(str) == "7").all()
    for table in (plain, df):  # one label dtype for every format (docs/manifests.md)
        assert table[table.attrs["labels"]].dtypes.eq(np.float32).all()


def test_generic_csv_extra_source_image_id_is_kept_too(tmp_path):
    (tmp_path / "t.csv").write_text("path,patient_id,image_id,source_image_id,y\na.png,p1,i1,s1,1\nb.png,p2,i1,s2,0\n")
    with pytest.warns(UserWarning, match="never replacing it"):
        df = load_manifest(tmp_path / "t.csv", id_column="path", check_files=False)
    assert df["source_image_id"].tolist() == ["i1", "i1"] and df["source_source_image_id"].tolist() == ["s1", "s2"]


# --------------------------------------------------------------------------- detection, folders, headers
@pytest.mark.parametrize("write, fmt", [(write_nih, "nih"), (write_padchest, "padchest"), (write_mimic, "mimic"),
                                        (write_rsna, "rsna"), (write_vindr, "vindr"), (write_siim, "siim")])
def test_auto_detection_by_header(tmp_path, write, fmt):
    table = write(tmp_path)
    assert _quiet(table).attrs["format"] == fmt
    assert _quiet(table, format=fmt).attrs["format"] == fmt


def test_zip_table_in_a_folder(tmp_path):
    write_rsna(tmp_path)
    with zipfile.ZipFile(tmp_path / "stage_2_train_labels.csv.zip", "w") as z:
        z.write(tmp_path / "stage_2_train_labels.csv", "stage_2_train_labels.csv")
    (tmp_path / "stage_2_train_labels.csv").unlink()
    df = _quiet(tmp_path)
    assert df.attrs["source"] == str(tmp_path / "stage_2_train_labels.csv.zip") and len(df) == 3
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as z:
        z.writestr("a.csv", "path,patient_id\n")
        z.writestr("b.csv", "path,patient_id\n")
    with pytest.raises(ManifestError, match=r"two.zip: cannot read this table.*exactly one CSV"):
        load_manifest(tmp_path / "two.zip")


def test_folder_with_several_recognised_tables_asks_for_one(tmp_path):
    write_siim(tmp_path)
    write_vindr(tmp_path)
    with pytest.raises(ManifestError, match=r"several CSV files.*annotations_train.csv \(vindr\).*train-rle.csv \(siim\)"):
        load_manifest(tmp_path)


def test_wrong_explicit_format_is_refused_from_the_header(tmp_path):
    body = b"".join(b'x,"unterminated\n' for _ in range(1000))
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"path,patient_id\n" + body)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # a truncated gzip stream: reading the body would fail differently
    for fmt, need in (("nih", "Image Index"), ("padchest", "ImageID"), ("mimic", "dicom_id"),
                      ("rsna", "patientId"), ("vindr", "image_id"), ("siim", "ImageId"), ("chexpert", "Path")):
        with pytest.raises(ManifestError, match=rf"format '{fmt}' needs column\(s\) \['{need}'"):
            load_manifest(path, format=fmt, check_files=False)


def test_missing_images_of_a_public_table(tmp_path):
    table = write_vindr(tmp_path)
    (tmp_path / "train" / "imgB.dicom").unlink()
    with pytest.raises(MissingFilesError, match=r"1 of 3.*imgB.dicom"):
        _quiet(table)


# --------------------------------------------------------------------------- views
def test_view_codes_of_other_datasets_map_to_frontal_or_lateral(tmp_path):
    views = ["L", "AP_horizontal", "AP AXIAL", "XTABLE LATERAL", "LARGE LATERAL", " pa ", "ll", "COSTAL", "None",
             "AP  LLD"]
    rows = "\n".join(f"i{i}.png,p{i},{v}" for i, v in enumerate(views))
    (tmp_path / "t.csv").write_text("path,patient_id,view\n" + rows + "\n")
    df = load_manifest(tmp_path / "t.csv", check_files=False)
    assert df["view"].tolist()[:7] == ["L", "AP_HORIZONTAL", "AP AXIAL", "XTABLE LATERAL", "LARGE LATERAL", "PA", "LL"]
    assert df["view"][9] == "AP LLD" and pd.isna(df["view"][8])
    assert df["frontal_lateral"].tolist()[:7] == ["lateral", "frontal", "frontal", "lateral", "lateral", "frontal",
                                                  "lateral"]
    assert pd.isna(df["frontal_lateral"][7]) and df["frontal_lateral"][9] == "frontal"
    assert {"L", "LL", "XTABLE LATERAL"} <= LATERAL_VIEWS and {"AP_HORIZONTAL", "AP AXIAL"} <= FRONTAL_VIEWS
