"""Annotation tables of the public chest X-ray datasets: one row per region, aggregated per image.

Loaders behind :func:`cxr_embed.io.manifest.load_manifest` for

* ``"rsna"`` -- RSNA Pneumonia Detection Challenge ``stage_2_train_labels.csv`` (one row per box,
  ``Target`` 1 with a box, 0 without), joined with a DICOM-header table beside it for sex, age and
  view, and with ``stage_2_detailed_class_info.csv`` when present;
* ``"vindr"`` -- VinDr-CXR's box table (one row per image x radiologist x finding: ``image_id``,
  ``rad_id``, ``class_name``, ``x_min`` ... ``y_max``); an image is positive for a finding when any
  radiologist marked it (``rule="any"``) or when more than half of its readers did
  (``rule="majority"``);
* ``"siim"`` -- SIIM-ACR Pneumothorax Segmentation ``train-rle.csv`` (one row per region, run-length
  code, ``-1`` = no pneumothorax), with images found by file name in nested folders.

Source columns that hold one value per image are kept; per-region ones (box coordinates, masks)
are summarised by counts (``n_boxes``, ``n_regions``). Each loader returns
``(table, root, label names)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import ManifestError
from ._tables import (assemble, check_blank, check_text, file_index, label_values, read_table, snake,
                      tables_in, text, warn)

__all__ = ["VINDR_FINDINGS", "VINDR_RULES"]

#: VinDr-CXR local findings (``class_name``) -> label column, after ``no_finding``.
VINDR_FINDINGS = {
    "Aortic enlargement": "aortic_enlargement",
    "Atelectasis": "atelectasis",
    "Calcification": "calcification",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "ILD": "ild",
    "Infiltration": "infiltration",
    "Lung Opacity": "lung_opacity",
    "Nodule/Mass": "nodule_mass",
    "Other lesion": "other_lesion",
    "Pleural effusion": "pleural_effusion",
    "Pleural thickening": "pleural_thickening",
    "Pneumothorax": "pneumothorax",
    "Pulmonary fibrosis": "pulmonary_fibrosis",
}

#: How VinDr-CXR's radiologists' marks become one label per image.
VINDR_RULES = ("any", "majority")

_IMAGE_FILES = frozenset({".dcm", ".dicom", ".png", ".jpg", ".jpeg"})
_RSNA_HEADERS = {"PatientSex": "sex", "PatientAge": "age", "ViewPosition": "view"}


def _per_image(raw: pd.DataFrame, codes: np.ndarray, n: int, columns) -> pd.DataFrame:
    """The columns that hold one value per image (first row of each image); per-region ones are left out."""
    keep = {}
    first = np.unique(codes, return_index=True)[1]
    for c in columns:
        if raw[c].groupby(codes).nunique(dropna=False).max() <= 1:
            keep[c] = raw[c].to_numpy()[first]
    return pd.DataFrame(keep, index=pd.RangeIndex(n))


def _image_paths(ids, root: Path, subfolders: tuple[str, ...], default: str, suffix: str, skipped: set[str],
                 recursive: bool = False) -> list[str]:
    index = file_index([root, *(root / s for s in subfolders)], by="stem", suffixes=_IMAGE_FILES,
                       recursive=recursive, skipped=skipped)
    return [index.get(i) or os.path.join(str(root), default, i + suffix) for i in ids]


def _no_patients(table: Path, dataset: str, hint: str) -> None:
    warn(f"{table}: {dataset} publishes no patient ids, so every image is its own patient "
         f"(patient_id = image_id); {hint}")


# ---------------------------------------------------------------------------
# RSNA Pneumonia Detection Challenge
# ---------------------------------------------------------------------------
def _load_rsna(table: Path, root: Path | None, skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    raw = read_table(table, "rsna", required=["patientId", "Target"], str_columns=["patientId"])
    check_blank(raw, table, ["patientId"])
    check_text(raw, table, ["patientId"])
    codes, uniq = pd.factorize(np.asarray(text(raw["patientId"]), dtype=object))
    n = len(uniq)
    target = pd.Series(label_values(raw["Target"], table, "Target"))
    y = target.groupby(codes).max().to_numpy(dtype=float)[None, :]  # positive when any row says 1
    boxes = raw["x"].notna() if "x" in raw.columns else pd.Series(False, index=raw.index)
    meta: dict = {"n_boxes": np.bincount(codes, weights=boxes.to_numpy(dtype=float), minlength=n).astype(int)}
    per_box = {"patientId", "Target", "x", "y", "width", "height"}
    extras = [_per_image(raw, codes, n, [c for c in raw.columns if c not in per_box])]

    headers = _sibling(table, ("dicom_header", "dicom_headers", "headers"))
    if headers is not None:
        hdr = read_table(headers, "rsna", str_columns=["Filename", "PatientID", "patientId", "PatientAge"])
        key_col = next((c for c in ("Filename", "patientId", "PatientID") if c in hdr.columns), None)
        if key_col is None:
            raise ManifestError(f"{headers}: an RSNA DICOM-header table needs Filename or PatientID to join "
                                f"on; found {list(hdr.columns)[:12]}")
        key = hdr[key_col].astype(str).str.strip().str.replace(r"\.dcm$", "", regex=True)
        first = ~key.duplicated().to_numpy()
        hdr = hdr[first].set_index(pd.Index(key.to_numpy()[first])).reindex(uniq)
        meta.update({name: hdr[c].to_numpy() for c, name in _RSNA_HEADERS.items() if c in hdr.columns})
        missing = int(hdr.isna().all(axis=1).sum())
        if missing:
            warn(f"{headers}: {missing} image(s) of {table.name} have no header row; their sex, age and view "
                 f"are missing")
        drop = {"Filename", "PatientID", "patientId", *_RSNA_HEADERS}
        extras.append(hdr[[c for c in hdr.columns if c not in drop and not c.startswith("Unnamed:")]]
                      .reset_index(drop=True))
    classes = _sibling(table, ("detailed_class_info",))
    if classes is not None:
        info = read_table(classes, "rsna", required=["patientId", "class"], str_columns=["patientId"])
        key = info["patientId"].str.strip()
        first = ~key.duplicated().to_numpy()
        meta["rsna_class"] = pd.Series(info["class"].to_numpy()[first],
                                       index=key.to_numpy()[first]).reindex(uniq).to_numpy()
    root = root if root is not None else table.parent
    paths = _image_paths(uniq, root, ("stage_2_train_images", "stage_2_test_images", "images"),
                         "stage_2_train_images", ".dcm", skipped)
    df = assemble(table, {"image_id": np.asarray(uniq, dtype=object), "path": paths,
                          "patient_id": np.asarray(uniq, dtype=object)},
                  ["pneumonia"], y, meta, pd.concat(extras, axis=1))
    return df, root, ["pneumonia"]


def _sibling(table: Path, words: tuple[str, ...]) -> Path | None:
    found = [t for t in tables_in(table.parent) if t != table and any(w in t.name.lower() for w in words)]
    if len(found) > 1:
        raise ManifestError(f"{table.parent}: several tables could be the one to join with {table.name} "
                            f"({', '.join(t.name for t in found)}); keep one")
    return found[0] if found else None


# ---------------------------------------------------------------------------
# VinDr-CXR
# ---------------------------------------------------------------------------
def _load_vindr(table: Path, root: Path | None, skipped: set[str],
                rule: str | None = None) -> tuple[pd.DataFrame, Path, list[str]]:
    rule = "any" if rule is None else rule
    if rule not in VINDR_RULES:
        raise ManifestError(f"{table}: rule={rule!r} is not one of {VINDR_RULES}; 'any' marks an image positive "
                            f"when any radiologist marked the finding, 'majority' when more than half did")
    raw = read_table(table, "vindr", required=["image_id", "class_name"],
                     str_columns=["image_id", "class_name", "rad_id"])
    check_blank(raw, table, ["image_id", "class_name"])
    check_text(raw, table, ["image_id"])
    codes, uniq = pd.factorize(np.asarray(text(raw["image_id"]), dtype=object))
    n = len(uniq)
    rad = raw["rad_id"].fillna("").str.strip() if "rad_id" in raw.columns else pd.Series("", index=raw.index)
    readers = pd.Series(rad.to_numpy()).groupby(codes).nunique().to_numpy()

    names = raw["class_name"].str.strip()
    is_none = names.str.lower() == "no finding"
    seen = sorted(set(names[~is_none]) - set(VINDR_FINDINGS), key=str.lower)
    classes = list(VINDR_FINDINGS) + seen
    labels = ["no_finding", *[VINDR_FINDINGS.get(c, snake(c)) for c in classes]]
    if len(set(labels)) != len(labels):
        raise ManifestError(f"{table}: class names {seen} map to label names already taken; rename them")
    marks = pd.DataFrame({"image": codes, "cls": pd.Index(classes).get_indexer(names),
                          "rad": rad.to_numpy()})[~is_none.to_numpy()].drop_duplicates()
    votes = marks.groupby(["image", "cls"]).size()
    img = votes.index.get_level_values("image").to_numpy()
    cls = votes.index.get_level_values("cls").to_numpy()
    positive = votes.to_numpy() >= 1 if rule == "any" else votes.to_numpy() * 2 > readers[img]
    y = np.zeros((len(labels), n))
    y[cls[positive] + 1, img[positive]] = 1.0
    y[0] = (y[1:].sum(axis=0) == 0).astype(float)  # "No finding": no finding positive under the rule
    if seen:
        warn(f"{table}: class names outside VinDr-CXR's 14 findings became labels too: {seen[:10]}")
    boxes = raw["x_min"].notna().to_numpy(dtype=float) if "x_min" in raw.columns else np.zeros(len(raw))
    meta = {"n_readers": readers, "n_boxes": np.bincount(codes, weights=boxes, minlength=n).astype(int)}
    per_mark = {"image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"}
    extras = _per_image(raw, codes, n, [c for c in raw.columns if c not in per_mark])
    _no_patients(table, "VinDr-CXR", "patient-grouped splits cannot see repeat visits")
    root = root if root is not None else table.parent
    paths = _image_paths(uniq, root, ("train", "test", "images"), "train", ".dicom", skipped)
    df = assemble(table, {"image_id": np.asarray(uniq, dtype=object), "path": paths,
                          "patient_id": np.asarray(uniq, dtype=object)}, labels, y, meta, extras)
    return df, root, labels


# ---------------------------------------------------------------------------
# SIIM-ACR Pneumothorax Segmentation
# ---------------------------------------------------------------------------
def _load_siim(table: Path, root: Path | None, skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    raw = read_table(table, "siim", required=["ImageId", "EncodedPixels"], str_columns=["ImageId", "EncodedPixels"])
    check_blank(raw, table, ["ImageId", "EncodedPixels"])
    check_text(raw, table, ["ImageId"])
    codes, uniq = pd.factorize(np.asarray(text(raw["ImageId"]), dtype=object))
    n = len(uniq)
    region = (raw["EncodedPixels"].str.strip() != "-1").to_numpy(dtype=float)
    n_regions = np.bincount(codes, weights=region, minlength=n).astype(int)
    y = (n_regions > 0).astype(float)[None, :]
    extras = _per_image(raw, codes, n, [c for c in raw.columns if c not in ("ImageId", "EncodedPixels")])
    _no_patients(table, "SIIM-ACR's table", "the DICOM files carry PatientID: load their folder with "
                 "format='dicom_folder' for patient keys")
    root = root if root is not None else table.parent
    paths = _image_paths(uniq, root, (), "", ".dcm", skipped, recursive=True)
    df = assemble(table, {"image_id": np.asarray(uniq, dtype=object), "path": paths,
                          "patient_id": np.asarray(uniq, dtype=object)},
                  ["pneumothorax"], y, {"n_regions": n_regions}, extras)
    return df, root, ["pneumothorax"]
