"""Tests of cxr_embed.io.manifest: every format, every error, and the shared real tables."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shared_dataset
from cxr_embed.exceptions import ManifestError, MissingFilesError
from cxr_embed.io.manifest import CHEXPERT_LABELS, NIH_LABELS, load_manifest, summarize_manifest


# --------------------------------------------------------------------------- helpers
def _png(path: Path, value: int = 100, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)
    return path


def _dicom(path: Path, *, patient_id="PAT-123", sex="F", age="045Y", view="PA", rows=4, image=True):
    """Write a small, valid Part-10 DICOM (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1" if image else "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.Modality = "DX" if image else "SR"
    if image:
        ds.ViewPosition = view
        ds.Rows, ds.Columns = rows, rows
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.arange(rows * rows, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _chexpert(tmp_path: Path, *, prefix="CheXpert-v1.0-small/") -> Path:
    """A CheXpert-layout dataset: <tmp>/CheXpert-v1.0-small/train.csv + images."""
    base = tmp_path / "CheXpert-v1.0-small"
    rows = [
        # Path, Sex, Age, Frontal/Lateral, AP/PA, findings...
        ("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", {"No Finding": 1}),
        ("train/patient00002/study2/view1_frontal.jpg", "Female", 87, "Frontal", "AP",
         {"Cardiomegaly": -1, "Lung Opacity": 1, "Fracture": 1}),
        ("train/patient00002/study2/view2_lateral.jpg", "Female", 87, "Lateral", "",
         {"Cardiomegaly": -1, "Lung Opacity": 1, "Fracture": 1}),
        ("train/patient00003/study1/view1_frontal.jpg", "Male", 41, "Frontal", "PA",
         {"Edema": 1, "Pleural Effusion": 0, "Support Devices": 1}),
    ]
    records = []
    for p, sex, age, fl, appa, f in rows:
        rec = {"Path": prefix + p, "Sex": sex, "Age": age, "Frontal/Lateral": fl, "AP/PA": appa}
        rec.update({name: f.get(name, "") for name in CHEXPERT_LABELS})
        records.append(rec)
        _png(base / p)
    pd.DataFrame(records).to_csv(base / "train.csv", index=False)
    return base / "train.csv"


def _nih(tmp_path: Path) -> Path:
    """An NIH Kaggle-layout dataset: Data_Entry_2017.csv + images_00{1,2}/images/*.png."""
    entries = [
        ("00000001_000.png", "Cardiomegaly|Emphysema", 0, 1, 58, "M", "PA", "images_001"),
        ("00000001_001.png", "No Finding", 1, 1, "058Y", "M", "AP", "images_001"),
        ("00000002_000.png", "Pleural_Thickening|Effusion", 0, 2, 414, "F", "PA", "images_002"),
        ("00000003_000.png", "Pneumonia", 0, 3, 30, "F", "AP", "images_002"),
    ]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    for name, labels, fu, pid, age, sex, view, folder in entries:
        lines.append(f"{name},{labels},{fu},{pid},{age},{sex},{view},2500,2048,0.168,0.168,")
        _png(tmp_path / folder / "images" / name)
    csv = tmp_path / "Data_Entry_2017_v2020.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def _generic(tmp_path: Path, n=6, **extra) -> Path:
    df = pd.DataFrame({
        "path": [f"images/img{i}.png" for i in range(n)],
        "patient_id": [f"p{i // 2}" for i in range(n)],
        "label": ["normal", "pneumonia"] * (n // 2),
        "pneumonia": [0, 1] * (n // 2),
        "effusion": [1, 0, -1, None, 0, 1][:n],
        "age": [0, 1] * (n // 2),          # 0/1 but metadata by name
        "follow_up": [0, 1] * (n // 2),    # 0/1 but metadata by name
        "orig_width": [1, 0] * (n // 2),   # 0/1 but metadata by pattern
        "width": [512] * n,
        "score": [0.2, 0.9] * (n // 2),   # numeric, not a label
    })
    for k, v in extra.items():
        df[k] = v
    for p in df["path"]:
        _png(tmp_path / p)
    csv = tmp_path / "labels.csv"
    df.to_csv(csv, index=False)
    return csv


# --------------------------------------------------------------------------- generic CSV
def test_generic_csv_detects_labels_not_metadata(tmp_path):
    csv = _generic(tmp_path)
    df = load_manifest(csv)
    assert df.attrs["format"] == "csv"
    assert df.attrs["labels"] == ["pneumonia", "effusion"]
    assert df.attrs["source"] == str(csv)
    assert list(df.columns[:5]) == ["image_id", "path", "patient_id", "pneumonia", "effusion"]
    for meta in ("label", "age", "follow_up", "orig_width", "width", "score"):
        assert meta in df.columns and meta not in df.attrs["labels"]
    assert df["image_id"].tolist()[:2] == ["images/img0", "images/img1"]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in df["path"])
    assert df["path"][0] == str(tmp_path / "images" / "img0.png")
    np.testing.assert_array_equal(df["effusion"].to_numpy(), [1.0, 0.0, -1.0, np.nan, 0.0, 1.0])
    assert df["effusion"].dtype == np.float32 and df["pneumonia"].dtype == np.float32
    assert df["patient_id"].tolist() == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_generic_csv_explicit_labels_override(tmp_path):
    csv = _generic(tmp_path)
    df = load_manifest(csv, labels=["pneumonia", "age"])
    assert df.attrs["labels"] == ["pneumonia", "age"]
    assert "effusion" in df.columns  # still there, as metadata
    with pytest.raises(ManifestError, match=r"'nope'.*lacks"):
        load_manifest(csv, labels=["nope"])
    with pytest.raises(ManifestError, match="reserved"):
        load_manifest(csv, labels=["patient_id"])


def test_generic_csv_bad_label_values_name_column_values_and_lines(tmp_path):
    csv = _generic(tmp_path, grade=[0, 1, 2, 0, 3, 1])
    assert "grade" not in load_manifest(csv).attrs["labels"]  # auto: not 0/1/-1 -> metadata
    with pytest.raises(ManifestError) as exc:
        load_manifest(csv, labels=["grade"])
    msg = str(exc.value)
    assert "'grade'" in msg and "'2'" in msg and "'3'" in msg and "[4, 6]" in msg and str(csv) in msg


def test_generic_csv_text_in_label_column(tmp_path):
    csv = _generic(tmp_path, flag=["1", "0", "yes", "", "1", "0"])
    with pytest.raises(ManifestError, match=r"'flag'.*'yes'.*\[4\]"):
        load_manifest(csv, labels=["flag"])


def test_generic_csv_ids_from_image_id_column_and_duplicates(tmp_path):
    csv = _generic(tmp_path, image_id=["a", "b", "c", "d", "e", "a"])
    with pytest.raises(ManifestError, match=r"duplicate image ids.*'a'.*id_column='path'"):
        load_manifest(csv)
    df = load_manifest(csv, id_column="path")
    assert df["image_id"].is_unique and df["image_id"][5] == "images/img5"
    assert "image_id" not in df.columns[3:]  # the original column is not duplicated as metadata
    assert df["source_image_id"].tolist() == ["a", "b", "c", "d", "e", "a"]
    csv2 = _generic(tmp_path, image_id=[f"x{i}" for i in range(6)])
    assert load_manifest(csv2)["image_id"].tolist() == [f"x{i}" for i in range(6)]
    with pytest.raises(ManifestError, match=r"column 'label' has duplicate image ids \(2 id\(s\)"):
        load_manifest(csv2, id_column="label")


def test_generic_csv_duplicate_paths(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("path,patient_id,x\na.png,p1,1\nb/../a.png,p1,0\n")
    with pytest.raises(ManifestError, match="duplicate image ids"):
        load_manifest(tmp_path / "t.csv")
    (tmp_path / "u.csv").write_text("path,patient_id,image_id,x\na.png,p1,i1,1\n./a.png,p1,i2,0\n")
    with pytest.raises(ManifestError, match=r"same image file is listed under several image ids.*a\.png"):
        load_manifest(tmp_path / "u.csv")


def test_generic_csv_id_column_with_unique_values(tmp_path):
    csv = _generic(tmp_path, accession=[f"acc{i}" for i in range(6)])
    df = load_manifest(csv, id_column="accession")
    assert df["image_id"].tolist() == [f"acc{i}" for i in range(6)]


def test_generic_csv_keeps_leading_zero_ids(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("path,patient_id,image_id,y\na.png,007,0012,1\n")
    df = load_manifest(tmp_path / "t.csv")
    assert df["patient_id"][0] == "007" and df["image_id"][0] == "0012"


def test_generic_csv_missing_required_columns(tmp_path):
    (tmp_path / "t.csv").write_text("path,y\na.png,1\n")
    with pytest.raises(ManifestError, match=r"needs column\(s\) \['patient_id'\]"):
        load_manifest(tmp_path / "t.csv")
    (tmp_path / "u.csv").write_text("path,patient_id,y\na.png,,1\n")
    with pytest.raises(ManifestError, match=r"'patient_id' is blank on CSV line\(s\) \[2\]"):
        load_manifest(tmp_path / "u.csv", check_files=False)


def test_missing_files_lists_ten_and_count_and_fixes(tmp_path):
    sub = tmp_path / "data"
    for i in range(12):
        _png(sub / "images" / f"img{i}.png")
    rows = "\n".join(f"images/img{i}.png,p{i},{i % 2}" for i in range(12))
    csv = tmp_path / "lists" / "t.csv"
    csv.parent.mkdir()
    csv.write_text("path,patient_id,y\n" + rows + "\n")
    with pytest.raises(MissingFilesError) as exc:
        load_manifest(csv)
    msg = str(exc.value)
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ManifestError)
    assert "12 of 12" in msg and "root=" in msg and "check_files=False" in msg
    assert msg.count("img") == 10  # the first ten, not all twelve
    df = load_manifest(csv, check_files=False)
    assert df["path"][0] == str(csv.parent / "images" / "img0.png")
    df = load_manifest(csv, root=sub)
    assert df.attrs["root"] == str(sub) and df["path"][11] == str(sub / "images" / "img11.png")


def test_absolute_paths_in_csv(tmp_path):
    p = _png(tmp_path / "elsewhere" / "scan.png")
    (tmp_path / "t.csv").write_text(f"path,patient_id,y\n{p},p1,1\n")
    df = load_manifest(tmp_path / "t.csv")
    assert df["path"][0] == str(p)
    assert df["image_id"][0] == "elsewhere/scan"  # relative to root (the CSV folder)


# --------------------------------------------------------------------------- CheXpert
def test_chexpert_format(tmp_path):
    csv = _chexpert(tmp_path)
    df = load_manifest(csv)
    assert df.attrs["format"] == "chexpert"
    assert df.attrs["labels"] == list(CHEXPERT_LABELS.values())
    assert df.attrs["root"] == str(tmp_path)  # parent of the CSV folder
    assert df["patient_id"].tolist() == ["patient00001", "patient00002", "patient00002", "patient00003"]
    assert df["image_id"][0] == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal"
    assert df["path"][0] == str(tmp_path / "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert df["cardiomegaly"].tolist()[1:3] == [-1.0, -1.0]  # uncertain kept
    assert np.isnan(df["cardiomegaly"][0])  # blank -> missing
    assert df["no_finding"][0] == 1.0 and df["pleural_effusion"][3] == 0.0
    assert df["sex"].tolist() == ["F", "F", "F", "M"]
    assert df["age"].tolist() == [68.0, 87.0, 87.0, 41.0]
    assert df["frontal_lateral"].tolist() == ["frontal", "frontal", "lateral", "frontal"]
    assert df["view"][0] == "AP" and df["view"][3] == "PA" and pd.isna(df["view"][2])
    s = summarize_manifest(df)
    assert s["labels"]["cardiomegaly"] == {"positive": 0, "negative": 0, "uncertain": 2, "missing": 2}
    assert s["n_patients"] == 3 and s["frontal_lateral"] == {"frontal": 3, "lateral": 1}


def test_chexpert_paths_relative_to_csv_folder(tmp_path):
    csv = _chexpert(tmp_path, prefix="")
    df = load_manifest(csv, format="chexpert")
    assert df.attrs["root"] == str(csv.parent)
    assert df["path"][0] == str(csv.parent / "train/patient00001/study1/view1_frontal.jpg")


def test_chexpert_nonstandard_layout_and_required_columns(tmp_path):
    (tmp_path / "t.csv").write_text("Path,Edema\nsite/p7/s1/v1.jpg,1\nsite/p8/s1/v1.jpg,\n")
    df = load_manifest(tmp_path / "t.csv", check_files=False)
    assert df.attrs["format"] == "chexpert" and df.attrs["labels"] == ["edema"]
    assert df["patient_id"].tolist() == ["p7", "p8"]  # grandparent folder when no patientNNNNN
    (tmp_path / "u.csv").write_text("Path,Edema\nv1.jpg,1\n")
    with pytest.raises(ManifestError, match=r"cannot take a patient id from Path 'v1.jpg' \(CSV line 2\)"):
        load_manifest(tmp_path / "u.csv", check_files=False)
    (tmp_path / "v.csv").write_text("Path,Sex\na/b/c.jpg,Male\n")
    with pytest.raises(ManifestError, match="needs finding columns"):
        load_manifest(tmp_path / "v.csv", format="chexpert", check_files=False)
    (tmp_path / "w.csv").write_text("path,Edema\na/b/c.jpg,1\n")
    with pytest.raises(ManifestError, match=r"needs column\(s\) \['Path'\]"):
        load_manifest(tmp_path / "w.csv", format="chexpert", check_files=False)


def test_chexpert_bad_label_value(tmp_path):
    csv = _chexpert(tmp_path)
    df = pd.read_csv(csv)
    df.loc[2, "Edema"] = 2
    df.to_csv(csv, index=False)
    with pytest.raises(ManifestError, match=r"'Edema'.*'2.0'.*\[4\]"):
        load_manifest(csv)


def test_chexpert_duplicate_rows(tmp_path):
    csv = _chexpert(tmp_path)
    df = pd.read_csv(csv)
    pd.concat([df, df.iloc[[1]]]).to_csv(csv, index=False)
    with pytest.raises(ManifestError, match=r"duplicate image ids \(1 id\(s\) repeated.*patient00002"):
        load_manifest(csv)


def test_chexpert_options_for_other_formats_rejected(tmp_path):
    csv = _chexpert(tmp_path)
    with pytest.raises(ManifestError, match=r"labels= applies to format='csv' or 'padchest' only.*'chexpert'"):
        load_manifest(csv, labels=["edema"])


# --------------------------------------------------------------------------- NIH
def test_nih_format_kaggle_layout(tmp_path):
    csv = _nih(tmp_path)
    with pytest.warns(UserWarning, match="age value"):
        df = load_manifest(tmp_path)  # folder -> its Data_Entry CSV
    assert df.attrs["format"] == "nih" and df.attrs["labels"] == list(NIH_LABELS)
    assert df.attrs["source"] == str(csv)
    assert df["image_id"].tolist() == ["00000001_000", "00000001_001", "00000002_000", "00000003_000"]
    assert df["path"][2] == str(tmp_path / "images_002" / "images" / "00000002_000.png")
    assert df["patient_id"].tolist() == ["1", "1", "2", "3"]
    assert df.loc[0, ["cardiomegaly", "emphysema", "no_finding"]].tolist() == [1.0, 1.0, 0.0]
    assert df.loc[1, "no_finding"] == 1.0 and df.loc[1, list(NIH_LABELS[1:])].sum() == 0
    assert df.loc[2, ["pleural_thickening", "effusion"]].tolist() == [1.0, 1.0]
    assert df["age"][0] == 58.0 and df["age"][1] == 58.0 and np.isnan(df["age"][2])  # 414 -> missing
    assert df["sex"].tolist() == ["M", "M", "F", "F"] and df["view"].tolist() == ["PA", "AP", "PA", "AP"]
    assert df["follow_up"].tolist() == [0, 1, 0, 0]
    assert "orig_width" in df.columns and not any(c.startswith("unnamed") for c in df.columns)
    assert summarize_manifest(df)["labels"]["no_finding"]["positive"] == 1


def test_nih_unknown_finding(tmp_path):
    csv = _nih(tmp_path)
    csv.write_text(csv.read_text().replace("Pneumonia", "Covid|Pneumonia"))
    with pytest.raises(ManifestError, match=r"'Covid' on CSV lines \[5\]"):
        load_manifest(csv)


def test_nih_missing_images(tmp_path):
    csv = _nih(tmp_path)
    (tmp_path / "images_002" / "images" / "00000003_000.png").unlink()
    with pytest.raises(MissingFilesError, match=r"1 of 4.*00000003_000\.png"), pytest.warns(UserWarning, match="age"):
        load_manifest(csv)


# --------------------------------------------------------------------------- class folders
def _folders(tmp_path: Path) -> Path:
    base = tmp_path / "chest_xray" / "train"
    for name in ("IM-0001-0001.jpeg", "IM-0003-0001.png", "NORMAL2-IM-0007-0001.png"):
        _png(base / "NORMAL" / name)
    for name in ("person1_bacteria_1.png", "person1_bacteria_2.png", "person7_virus_3.png"):
        _png(base / "PNEUMONIA" / name)
    (base / "PNEUMONIA" / "notes.txt").write_text("not an image")
    (base / ".DS_Store").write_text("junk")
    return base


def test_folders_format(tmp_path):
    base = _folders(tmp_path)
    # IM-0001-0001.jpeg is really a PNG; file content does not matter for a manifest
    df = load_manifest(base)
    assert df.attrs["format"] == "folders" and df.attrs["labels"] == ["normal", "pneumonia"]
    assert len(df) == 6 and df["image_id"][0] == "NORMAL/IM-0001-0001"
    assert df["normal"].tolist() == [1.0] * 3 + [0.0] * 3
    assert df["pneumonia"].tolist() == [0.0] * 3 + [1.0] * 3
    assert df["normal"].dtype == df["pneumonia"].dtype == np.float32
    assert df["label"].tolist() == ["NORMAL"] * 3 + ["PNEUMONIA"] * 3
    assert (df["patient_id"] == df["image_id"]).all()
    with pytest.raises(ManifestError, match="root= is only used by CSV formats"):
        load_manifest(base, root=tmp_path)


def test_folders_patient_pattern(tmp_path):
    base = _folders(tmp_path)
    df = load_manifest(base, patient_pattern=r"(person\d+|IM-\d+)")
    assert df["patient_id"].tolist() == ["IM-0001", "IM-0003", "IM-0007", "person1", "person1", "person7"]
    assert summarize_manifest(df)["n_patients"] == 5
    with pytest.raises(ManifestError, match=r"matches no patient id in 3 file name\(s\).*IM-0001-0001"):
        load_manifest(base, patient_pattern=r"person(\d+)_")
    with pytest.raises(ManifestError, match="capturing group"):
        load_manifest(base, patient_pattern=r"person\d+")
    with pytest.raises(ManifestError, match="not a valid regular expression"):
        load_manifest(base, patient_pattern=r"(person")
    df = load_manifest(base, format="folders", patient_pattern=r"(?P<patient>person\d+|IM-\d+)")
    assert df["patient_id"][3] == "person1"


def test_folders_colliding_class_names(tmp_path):
    _png(tmp_path / "Normal" / "a.png")
    _png(tmp_path / "normal" / "b.png")
    with pytest.raises(ManifestError, match="both map to label 'normal'"):
        load_manifest(tmp_path, format="folders")


# --------------------------------------------------------------------------- unlabelled image folder
def test_images_format_flat_and_nested(tmp_path):
    base = tmp_path / "to_score"
    _png(base / "person3_a.png")
    _png(base / "person3_b.jpg")
    _png(base / "later" / "person9_c.png")
    (base / "notes.txt").write_text("not an image")
    (base / ".hidden.png").write_text("junk")
    df = load_manifest(base)
    assert df.attrs["format"] == "images" and df.attrs["labels"] == []
    assert df["image_id"].tolist() == ["person3_a", "person3_b", "later/person9_c"]
    assert (df["patient_id"] == df["image_id"]).all()
    assert all(os.path.isabs(p) and os.path.exists(p) for p in df["path"])
    df = load_manifest(base, format="images", patient_pattern=r"(person\d+)_")
    assert df["patient_id"].tolist() == ["person3", "person3", "person9"]
    with pytest.raises(ManifestError, match="matches no patient id"):
        load_manifest(base, patient_pattern=r"(patient\d+)")
    with pytest.raises(ManifestError, match="root= is only used by CSV formats"):
        load_manifest(base, root=tmp_path)
    with pytest.raises(ManifestError, match="salt= applies to format='dicom_folder' only"):
        load_manifest(base, salt="x")


def test_images_format_needs_images(tmp_path):
    (tmp_path / "x.txt").write_text("nothing")
    with pytest.raises(ManifestError, match="format 'images' expects image files"):
        load_manifest(tmp_path, format="images")
    with pytest.raises(ManifestError, match="needs a folder"):
        load_manifest(tmp_path / "x.txt", format="images")


def test_one_class_subfolder_is_an_image_folder_not_classes(tmp_path):
    _png(tmp_path / "only" / "a.png")
    _png(tmp_path / "only" / "b.png")
    df = load_manifest(tmp_path)
    assert df.attrs["format"] == "images" and df["image_id"].tolist() == ["only/a", "only/b"]


# --------------------------------------------------------------------------- DICOM folder
def test_dicom_folder(tmp_path):
    base = tmp_path / "dicoms"
    _dicom(base / "a" / "1.dcm", patient_id="PAT-123", sex="F", age="045Y", view="PA")
    _dicom(base / "a" / "2", patient_id="PAT-123", sex="F", age="045Y", view="LL")  # no suffix
    _dicom(base / "b" / "1.2.840.99.dcm", patient_id="PAT-999", sex="M", age="006M", view="AP")
    _dicom(base / "b" / "report.dcm", image=False)  # SR without pixels: skipped
    (base / "readme.txt").write_text("hello")
    _png(base / "b" / "preview.png")
    with pytest.warns(UserWarning, match="skipped 1 DICOM file"):
        df = load_manifest(base)
    assert df.attrs["format"] == "dicom_folder" and df.attrs["labels"] == []
    assert df["image_id"].tolist() == ["a/1", "a/2", "b/1.2.840.99"]
    # patient key: salted hash, equal for one patient, never the raw id or name
    assert df["patient_id"][0] == df["patient_id"][1] != df["patient_id"][2]
    flat = [str(v) for v in df.to_numpy().ravel()]
    assert not any("PAT-" in v or "Doe" in v for v in flat)
    assert df["sex"].tolist() == ["F", "F", "M"]
    assert df["age"][0] == 45.0 and df["age"][2] == pytest.approx(0.5)
    assert df["view"].tolist() == ["PA", "LL", "AP"]
    assert df["frontal_lateral"].tolist() == ["frontal", "lateral", "frontal"]
    assert df["modality"].tolist() == ["DX"] * 3 and df["rows"].tolist() == [4, 4, 4]
    with pytest.warns(UserWarning, match="skipped 1 DICOM file"):
        salted = load_manifest(base, format="dicom_folder", salt="another project")
    assert salted["patient_id"][0] != df["patient_id"][0]


def test_dicom_folder_without_dicoms(tmp_path):
    (tmp_path / "x.txt").write_text("nothing")
    with pytest.raises(ManifestError, match="cannot tell the format"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no DICOM image found"):
        load_manifest(tmp_path, format="dicom_folder")


# --------------------------------------------------------------------------- format errors
def test_unknown_and_bad_formats(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ManifestError, match=r"unknown manifest format.*\['a', 'b'\].*'nih'.*'chexpert'.*'csv'"):
        load_manifest(tmp_path / "t.csv")
    with pytest.raises(ManifestError, match=r"unknown format 'parquet'.*'dicom_folder'"):
        load_manifest(tmp_path / "t.csv", format="parquet")
    with pytest.raises(ManifestError, match="needs a folder"):
        load_manifest(tmp_path / "t.csv", format="folders")
    with pytest.raises(ManifestError, match=r"needs column\(s\) \['Image Index', 'Finding Labels', 'Patient ID'\]"):
        load_manifest(tmp_path / "t.csv", format="nih")


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="empty.csv: the file is empty"):
        load_manifest(tmp_path / "empty.csv")
    (tmp_path / "head.csv").write_text("path,patient_id,y\n")
    with pytest.raises(ManifestError, match="header but no rows"):
        load_manifest(tmp_path / "head.csv")
    with pytest.raises(MissingFilesError, match="nope.csv: manifest path does not exist"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ManifestError, match="bin.csv"):
        load_manifest(tmp_path / "bin.csv")


def test_folder_with_one_csv_and_explicit_format(tmp_path):
    csv = _generic(tmp_path)
    df = load_manifest(tmp_path, format="csv")
    assert df.attrs["source"] == str(csv) and len(df) == 6
    assert load_manifest(tmp_path).attrs["format"] == "csv"  # labels.csv wins over images/ subfolder


def test_folder_with_several_csvs(tmp_path):
    (tmp_path / "train.csv").write_text("path,patient_id\n")
    (tmp_path / "valid.csv").write_text("path,patient_id\n")
    with pytest.raises(ManifestError, match=r"several CSV files \(train.csv, valid.csv\)"):
        load_manifest(tmp_path)


def test_summarize_manifest_is_json_and_counts(tmp_path):
    df = load_manifest(_generic(tmp_path))
    s = summarize_manifest(df)
    json.dumps(s)
    assert s["n_images"] == 6 and s["n_patients"] == 3 and s["format"] == "csv"
    assert s["images_per_patient"] == {"min": 2, "median": 2.0, "max": 2}
    assert s["labels"]["effusion"] == {"positive": 2, "negative": 2, "uncertain": 1, "missing": 1}
    assert s["views"] == {} and s["age"] == {"min": 0.0, "median": 0.5, "max": 1.0, "missing": 0}
    with pytest.raises(ManifestError, match="patient_id"):
        summarize_manifest(pd.DataFrame({"image_id": ["a"]}))


# --------------------------------------------------------------------------- shared real data
@pytest.mark.realdata
@pytest.mark.parametrize("name, n_images, n_patients, target, kwargs", [
    ("nih_cxr14_pneumonia", 717, 478, "pneumonia", {}),
    ("kermany_pediatric", 1525, 1018, "pneumonia", {}),
    ("nih_cxr14_tiny64", 968, 262, "no_finding", {}),
    ("siim_dicom_sample", 2, 1, "pneumothorax", {"id_column": "path"}),
])
def test_shared_labels_csv(name, n_images, n_patients, target, kwargs):
    folder = shared_dataset(name)
    df = load_manifest(folder / "labels.csv", **kwargs)  # check_files=True: every image exists
    assert len(df) == n_images and df["patient_id"].nunique() == n_patients
    assert df["image_id"].is_unique and target in df.attrs["labels"]
    assert df.attrs["format"] == "csv"
    for meta in ("age", "width", "height", "follow_up", "orig_width", "orig_height", "rows", "columns",
                 "bits_stored", "label", "orig_pixel_spacing_mm"):
        assert meta not in df.attrs["labels"]
    for lab in df.attrs["labels"]:
        assert set(df[lab].dropna().unique()) <= {0.0, 1.0, -1.0}
    if "sex" in df.columns:
        assert set(df["sex"].dropna()) <= {"M", "F"}
    if name == "nih_cxr14_pneumonia":
        s = summarize_manifest(df)
        assert s["labels"]["pneumonia"]["positive"] == 362 and s["labels"]["no_finding"]["positive"] == 355
        assert s["sex"] == {"F": 331, "M": 386}
        assert set(NIH_LABELS) <= set(df.attrs["labels"])
    if name == "kermany_pediatric":
        assert int(df["pneumonia"].sum()) == 840 and df.attrs["labels"] == ["pneumonia"]


@pytest.mark.realdata
def test_shared_siim_duplicate_image_id_is_explained():
    folder = shared_dataset("siim_dicom_sample")
    with pytest.raises(ManifestError, match="id_column='path'"):
        load_manifest(folder / "labels.csv")
    df = load_manifest(folder / "labels.csv", id_column="path")
    assert df["image_id"].tolist() == ["images/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819",
                                       "images/Fake_MONOHR1"]
    assert df["source_image_id"].nunique() == 1 and df["variant"].tolist() == ["original", "modified_monochrome1"]
