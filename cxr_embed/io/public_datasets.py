"""Finding tables of the public chest X-ray datasets: one row per image, labels per image or study.

Loaders behind :func:`cxr_embed.io.manifest.load_manifest` for

* ``"nih"`` -- NIH ChestX-ray14 ``Data_Entry_2017*.csv``, and the radiologist-adjudicated
  Google 2019 subset (Majkowska et al., Radiology 2019) whose four YES/NO columns become the
  labels :data:`GOOGLE2019_LABELS` next to the NIH ones;
* ``"chexpert"`` -- CheXpert ``train.csv``/``valid.csv``, or the official folder holding both
  (a ``split`` column says which);
* ``"padchest"`` -- PadChest ``PADCHEST_chest_x_ray_images_labels_160K*.csv(.gz)``, whose
  ``Labels`` cell is a Python-list string, parsed with :func:`ast.literal_eval` (never ``eval``);
* ``"mimic"`` -- MIMIC-CXR-JPG ``mimic-cxr-2.0.0-metadata.csv.gz`` joined with the CheXpert or
  NegBio label table on ``subject_id`` + ``study_id``.

Each returns ``(table, root, label names)``; :func:`cxr_embed.io.manifest.load_manifest`
normalises and checks the result. See ``docs/manifests.md`` for every dataset's quirks.
"""
from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import ManifestError
from ._tables import (LABEL_DTYPE, assemble, check_blank, check_text, csv_lines, file_index, ids_and_paths,
                      ids_from_names, label_values, multi_hot, read_header, read_table, require, snake, table_stem,
                      tables_in, text, warn, yes_no_values)

__all__ = ["CHEXPERT_LABELS", "NIH_LABELS", "GOOGLE2019_LABELS"]

#: CheXpert finding (CSV header) -> label column name (also MIMIC-CXR-JPG's label tables).
CHEXPERT_LABELS = {
    "No Finding": "no_finding",
    "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "lung_opacity",
    "Lung Lesion": "lung_lesion",
    "Edema": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural_effusion",
    "Pleural Other": "pleural_other",
    "Fracture": "fracture",
    "Support Devices": "support_devices",
}

#: NIH ChestX-ray14 label columns, in output order ("No Finding" first).
NIH_LABELS = (
    "no_finding", "atelectasis", "cardiomegaly", "consolidation", "edema", "effusion",
    "emphysema", "fibrosis", "hernia", "infiltration", "mass", "nodule",
    "pleural_thickening", "pneumonia", "pneumothorax",
)

#: Google 2019 adjudicated NIH labels (YES/NO column -> label column), after the NIH labels.
GOOGLE2019_LABELS = {
    "Fracture": "google2019_fracture",
    "Pneumothorax": "google2019_pneumothorax",
    "Airspace opacity": "google2019_airspace_opacity",
    "Nodule or mass": "google2019_nodule_or_mass",
}

_NIH_META = {"Patient Age": "age", "Patient Gender": "sex", "View Position": "view", "Follow-up #": "follow_up",
             "OriginalImage[Width": "orig_width", "Height]": "orig_height",
             "OriginalImagePixelSpacing[x": "orig_pixel_spacing_x", "y]": "orig_pixel_spacing_y",
             "Finding Labels": "finding_labels", "Set Id": "google2019_set"}
_CHEXPERT_META = {"Sex": "sex", "Age": "age", "Frontal/Lateral": "frontal_lateral", "AP/PA": "view"}
_CHEXPERT_SPLITS = ("train", "valid", "test")
_CHEXPERT_PATIENT = re.compile(r"(?:^|[/\\])(patient\d+)(?=[/\\])")
_PADCHEST_META = {"StudyID": "study_id", "StudyDate_DICOM": "study_date", "PatientBirth": "birth_year",
                  "PatientSex_DICOM": "sex", "Projection": "view", "ViewPosition_DICOM": "view_dicom",
                  "MethodProjection": "projection_method", "MethodLabel": "label_method",
                  "Pediatric": "pediatric", "Modality_DICOM": "modality", "Manufacturer_DICOM": "manufacturer",
                  "Localizations": "localizations"}
#: PadChest's free-text columns, not loaded (a third of the file; read them with pandas if needed)
_PADCHEST_NUMBERS = frozenset({"PatientBirth", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
                               "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM",
                               "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM", "XRayTubeCurrent_DICOM",
                               "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime", "RelativeXRayExposure_DICOM"})
_SIMPLE_LIST = re.compile(r"\[\s*(?:'[^'\\\n]*'\s*(?:,\s*'[^'\\\n]*'\s*)*)?\]")
_QUOTED = re.compile(r"'([^'\\\n]*)'")
_PADCHEST_TEXT = ("Report", "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS", "ReportID")
_MIMIC_META = {"ViewPosition": "view", "Rows": "rows", "Columns": "columns", "StudyDate": "study_date",
               "StudyTime": "study_time", "PerformedProcedureStepDescription": "procedure",
               "ProcedureCodeSequence_CodeMeaning": "procedure_code_meaning",
               "ViewCodeSequence_CodeMeaning": "view_code_meaning",
               "PatientOrientationCodeSequence_CodeMeaning": "patient_orientation"}


def _extras(raw: pd.DataFrame, consumed) -> pd.DataFrame:
    used = set(consumed)
    return raw[[c for c in raw.columns if c not in used and not str(c).startswith("Unnamed:") and c != ""]]


# ---------------------------------------------------------------------------
# NIH ChestX-ray14 (+ Google 2019 adjudicated labels)
# ---------------------------------------------------------------------------
def _load_nih(csv: Path, root: Path | None, skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    need = ["Image Index", "Finding Labels", "Patient ID"]
    raw = read_table(csv, "nih", required=need, str_columns=need + list(GOOGLE2019_LABELS))
    check_blank(raw, csv, need)
    check_text(raw, csv, ["Image Index", "Patient ID"])
    root = root if root is not None else csv.parent
    folders = [root, root / "images"]
    if root.is_dir():
        for d in sorted(root.glob("images_*")):
            folders += [d, d / "images"]
    index = file_index(folders, skipped=skipped)
    names = text(raw["Image Index"])
    default = os.path.join(str(root), "images", "")
    paths = [index.get(n) or default + n for n in names]

    codes, uniques = pd.factorize(raw["Finding Labels"].astype(str))
    vocab = {lab.replace("_", " "): j for j, lab in enumerate(NIH_LABELS)}
    tokens, bad = [], {}
    for u, s in enumerate(uniques):
        toks = []
        for token in str(s).split("|"):
            j = vocab.get(token.strip().lower().replace("_", " "))
            if j is None:
                bad.setdefault(token.strip(), []).append(u)
            else:
                toks.append(j)
        tokens.append(toks)
    if bad:
        desc = "; ".join(f"{t!r} on CSV lines {csv_lines(np.flatnonzero(np.isin(codes, us)))}"
                         for t, us in list(bad.items())[:5])
        raise ManifestError(f"{csv}: column 'Finding Labels' has values outside the NIH vocabulary ({desc}); "
                            f"expected '|'-separated names among No Finding, "
                            + ", ".join(lab.replace('_', ' ').title() for lab in NIH_LABELS[1:]))
    y = multi_hot(codes, tokens, len(NIH_LABELS))
    labels = list(NIH_LABELS)
    google = [c for c in GOOGLE2019_LABELS if c in raw.columns]
    if google:  # the adjudicated subset: YES/NO columns beside the NIH labels, under their own names
        y = np.vstack([y, *[yes_no_values(raw[c], csv, c)[None, :] for c in google]], dtype=LABEL_DTYPE)
        labels += [GOOGLE2019_LABELS[c] for c in google]
    meta = {name: raw[c] for c, name in _NIH_META.items() if c in raw.columns}
    df = assemble(csv, {"image_id": ids_from_names(names), "path": paths, "patient_id": text(raw["Patient ID"])},
                  labels, y, meta, _extras(raw, ["Image Index", "Patient ID", *google, *_NIH_META]))
    return df, root, labels


# ---------------------------------------------------------------------------
# CheXpert
# ---------------------------------------------------------------------------
def chexpert_tables(folder: Path, skipped: set[str] | None = None) -> list[Path]:
    """``train.csv``, ``valid.csv`` (and ``test.csv``) of a CheXpert folder, when at least two are there."""
    found = {table_stem(t.name): t for t in tables_in(folder, skipped) if t.name.lower().endswith(".csv")}
    tables = [found[s] for s in _CHEXPERT_SPLITS if s in found]
    return tables if len(tables) >= 2 else []


def _load_chexpert(source: Path, root: Path | None, skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    if not source.is_dir():
        return _load_chexpert_table(source, root)
    tables = chexpert_tables(source, skipped)
    if not tables:
        raise ManifestError(f"{source}: a CheXpert folder holds train.csv and valid.csv; found neither pair; "
                            f"pass the CSV to read")
    parts, labels, roots = [], [], set()
    for t in tables:
        df, r, labs = _load_chexpert_table(t, root)
        parts.append(df.assign(split=table_stem(t.name)))
        labels += [x for x in labs if x not in labels]
        roots.add(r)
    df = pd.concat(parts, ignore_index=True)
    ordered = ["image_id", "path", "patient_id", *labels]
    df = df[ordered + [c for c in df.columns if c not in ordered]]
    return df, roots.pop() if len(roots) == 1 else source.parent, labels


def _load_chexpert_table(csv: Path, root: Path | None) -> tuple[pd.DataFrame, Path, list[str]]:
    def check(header: list[str]) -> None:
        if not any(c in CHEXPERT_LABELS for c in header):
            raise ManifestError(f"{csv}: format 'chexpert' needs finding columns such as "
                                f"{list(CHEXPERT_LABELS)[:4]}; found {header[:15]}")

    raw = read_table(csv, "chexpert", required=["Path"], str_columns=["Path"], check=check)
    check_blank(raw, csv, ["Path"])
    check_text(raw, csv, ["Path"])
    findings = [c for c in CHEXPERT_LABELS if c in raw.columns]
    rel = text(raw["Path"])
    if root is None:
        root = _chexpert_root(csv, rel)
    patients = []
    for i, p in enumerate(rel):
        m = _CHEXPERT_PATIENT.search(p)
        if m is None:  # not the official layout: the grandparent folder
            parts = [s for s in p.replace("\\", "/").split("/") if s]
            if len(parts) < 3:
                raise ManifestError(f"{csv}: cannot take a patient id from Path {p!r} (CSV line {i + 2}); "
                                    f"expected .../patientNNNNN/studyN/viewN_frontal.jpg")
        patients.append(m.group(1) if m is not None else parts[-3])
    y = np.empty((len(findings), len(raw)), dtype=LABEL_DTYPE)
    for j, c in enumerate(findings):
        y[j] = label_values(raw[c], csv, c)
    meta = {name: raw[c] for c, name in _CHEXPERT_META.items() if c in raw.columns}
    ids, paths = ids_and_paths(rel, root)
    df = assemble(csv, {"image_id": ids, "path": paths, "patient_id": patients},
                  [CHEXPERT_LABELS[c] for c in findings], y, meta,
                  _extras(raw, ["Path", *findings, *_CHEXPERT_META]))
    return df, root, [CHEXPERT_LABELS[c] for c in findings]


def _chexpert_root(csv: Path, rel: list[str]) -> Path:
    first = rel[0].replace("\\", "/").lstrip("./").split("/")[0] if rel else ""
    candidates = [csv.parent.parent, csv.parent] if first == csv.parent.name else [csv.parent, csv.parent.parent]
    for cand in candidates:
        if any(os.path.isfile(os.path.join(str(cand), p)) for p in rel[:5]):
            return cand
    return candidates[0]


# ---------------------------------------------------------------------------
# PadChest
# ---------------------------------------------------------------------------
def _load_padchest(csv: Path, root: Path | None, skipped: set[str],
                   labels: Sequence[str] | None = None) -> tuple[pd.DataFrame, Path, list[str]]:
    header = read_header(csv)
    keep = [c for c in header if c not in _PADCHEST_TEXT and c and not c.startswith("Unnamed:")]
    text_columns = [c for c in keep if c not in _PADCHEST_NUMBERS]  # as Python str: repeated values shared
    raw = read_table(csv, "padchest", required=["ImageID", "ImageDir", "PatientID", "Labels"],
                     str_columns=text_columns, usecols=keep)
    check_blank(raw, csv, ["ImageID", "ImageDir", "PatientID"])
    check_text(raw, csv, ["ImageID", "ImageDir", "PatientID"])
    root = root if root is not None else csv.parent
    names = text(raw["ImageID"])
    dirs = [d[:-2] if d.endswith(".0") else d for d in text(raw["ImageDir"])]  # "0" (or "0.0") .. "54"
    base = os.path.join(str(root), "")
    core = {"image_id": ids_from_names(names), "path": [f"{base}{d}{os.sep}{n}" for d, n in zip(dirs, names)],
            "patient_id": text(raw["PatientID"])}
    codes, uniques = pd.factorize(raw["Labels"], use_na_sentinel=True)
    meta = {name: raw[c] for c, name in _PADCHEST_META.items() if c in raw.columns}
    if "study_date" in meta and "birth_year" in meta:  # age in whole years at the study (year - birth year)
        codes_date, dates = pd.factorize(raw["StudyDate_DICOM"], use_na_sentinel=True)  # a few thousand dates
        years = np.append(pd.to_numeric(pd.Series(dates, dtype=object).str.slice(0, 4), errors="coerce")
                          .to_numpy(dtype=float), np.nan)
        age = years[codes_date] - pd.to_numeric(raw["PatientBirth"], errors="coerce").to_numpy(dtype=float)
        meta = {"age": np.where(age >= 0, age, np.nan), **meta}
    extras = _extras(raw, ["ImageID", "ImageDir", "PatientID", "Labels", *_PADCHEST_META])
    del raw, names, dirs  # the source ids are no longer needed: free them before the label matrix

    order, tokens = _padchest_tokens(csv, codes, uniques)
    unlabelled = (codes < 0) | np.isin(codes, [u for u, toks in enumerate(tokens) if not toks])
    if labels is not None:  # keep only the findings asked for (193 columns take 118 MiB)
        unknown = [x for x in labels if x not in order]
        if unknown:
            raise ManifestError(f"{csv}: labels= names finding(s) {unknown[:10]} that PadChest's Labels column "
                                f"does not hold; the {len(order)} findings are snake-case names such as "
                                f"{order[:8]}")
        index = {name: i for i, name in enumerate(labels)}
        tokens = [[index[order[t]] for t in toks if order[t] in index] for toks in tokens]
        order = list(labels)
    y = multi_hot(np.where(unlabelled, -1, codes), tokens, len(order))
    if unlabelled.any():
        y[:, unlabelled] = np.nan
        warn(f"{csv}: {int(unlabelled.sum())} image(s) have no labels (Labels blank, [] or ['']); their label "
             f"columns are NaN (missing), e.g. CSV line(s) {csv_lines(np.flatnonzero(unlabelled))}")
    return assemble(csv, core, order, y, meta, extras), root, order


def _padchest_tokens(csv: Path, codes: np.ndarray, uniques) -> tuple[list[str], list[list[int]]]:
    """Sorted snake-case finding names, and the label indices of each distinct ``Labels`` value."""
    column_of: dict[str, int] = {}
    snake_of: dict[str, str] = {}
    tokens: list[list[int]] = []
    for u, s in enumerate(uniques):
        value = _literal_list(str(s))
        if value is None:
            rows = np.flatnonzero(codes == u)
            raise ManifestError(f"{csv}: column 'Labels' should hold a list of findings such as "
                                f"\"['normal']\"; found {str(s)[:80]!r} on CSV line(s) {csv_lines(rows)} "
                                f"(line numbers count one line per row); fix those rows")
        names = {snake_of[t] if t in snake_of else snake_of.setdefault(t, snake(t)) for t in value if t.strip()}
        tokens.append([column_of.setdefault(name, len(column_of)) for name in names])
    order = sorted(column_of)
    rank = {name: i for i, name in enumerate(order)}
    remap = [rank[name] for name in column_of]
    return order, [sorted(remap[t] for t in toks) for toks in tokens]


def _literal_list(s: str) -> list[str] | None:
    """A Python list of str literals, or None: a plain regex for the usual form, else ast.literal_eval."""
    if _SIMPLE_LIST.fullmatch(s):
        return _QUOTED.findall(s)
    try:
        value = ast.literal_eval(s)  # literals only, never eval()
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        return list(value)
    return None


# ---------------------------------------------------------------------------
# MIMIC-CXR-JPG
# ---------------------------------------------------------------------------
def _sibling(table: Path, word: str) -> Path | None:
    """The one table beside ``table`` whose name contains ``word`` (None when there is none)."""
    found = [t for t in tables_in(table.parent) if word in t.name.lower() and t != table]
    if len(found) > 1:
        raise ManifestError(f"{table.parent}: several '{word}' tables ({', '.join(t.name for t in found)}); "
                            f"keep one beside {table.name}")
    return found[0] if found else None


def _load_mimic(table: Path, root: Path | None, skipped: set[str]) -> tuple[pd.DataFrame, Path, list[str]]:
    keys = ["subject_id", "study_id"]
    header = read_header(table)
    if not set(keys) <= set(header):
        require(header, table, ["dicom_id", *keys], "mimic")
    if "dicom_id" in header:
        metadata = table
        labels_table = _sibling(table, "chexpert") or _sibling(table, "negbio")
    else:
        labels_table = table
        metadata = _sibling(table, "metadata")
        if metadata is None:
            raise ManifestError(f"{table}: a MIMIC-CXR-JPG label table lists studies, not images; put "
                                f"mimic-cxr-2.0.0-metadata.csv.gz (dicom_id, subject_id, study_id, ViewPosition) "
                                f"beside it, or pass the metadata table")
    raw = read_table(metadata, "mimic", required=["dicom_id", *keys], str_columns=["dicom_id", *keys])
    check_blank(raw, metadata, ["dicom_id", *keys])
    check_text(raw, metadata, ["dicom_id", *keys])
    root = root if root is not None else metadata.parent
    base = root / "files" if (root / "files").is_dir() else root
    subject = [v[:-2] if v.endswith(".0") else v for v in text(raw["subject_id"])]
    study = [v[:-2] if v.endswith(".0") else v for v in text(raw["study_id"])]
    image_ids = [f"p{p[:2]}/p{p}/s{s}/{d}" for p, s, d in zip(subject, study, text(raw["dicom_id"]))]
    prefix = os.path.join(str(base), "")
    paths = [f"{prefix}{i}.jpg" for i in image_ids]

    labels: list[str] = []
    y = np.empty((0, len(raw)), dtype=LABEL_DTYPE)
    if labels_table is None:
        warn(f"{metadata}: no MIMIC-CXR-JPG label table (mimic-cxr-2.0.0-chexpert.csv.gz or -negbio.csv.gz) "
             f"beside it; the table has no labels")
    else:
        lab = read_table(labels_table, "mimic", required=keys, str_columns=keys,
                         check=lambda h: _need_findings(labels_table, h))
        check_blank(lab, labels_table, keys)
        key = pd.Index([f"{p}/{s}" for p, s in zip(text(lab["subject_id"]), text(lab["study_id"]))])
        if key.has_duplicates:
            raise ManifestError(f"{labels_table}: studies listed twice ({key[key.duplicated()].tolist()[:5]}); "
                                f"each subject_id + study_id needs one row")
        pos = key.get_indexer([f"{p}/{s}" for p, s in zip(subject, study)])
        findings = [c for c in CHEXPERT_LABELS if c in lab.columns]
        labels = [CHEXPERT_LABELS[c] for c in findings]
        y = np.full((len(findings), len(raw)), np.nan, dtype=LABEL_DTYPE)
        for j, c in enumerate(findings):
            values = label_values(lab[c], labels_table, c)
            y[j, pos >= 0] = values[pos[pos >= 0]]
        if (pos < 0).any():
            warn(f"{metadata}: {int((pos < 0).sum())} image(s) belong to studies without a row in "
                 f"{labels_table.name}; their labels are NaN (missing)")
    meta = {"study_id": np.asarray(study, dtype=object)}
    meta.update({name: raw[c] for c, name in _MIMIC_META.items() if c in raw.columns})
    split_table = _sibling(metadata, "split")
    if split_table is not None:
        split = read_table(split_table, "mimic", required=["dicom_id", "split"], str_columns=["dicom_id"])
        meta["split"] = split.set_index(pd.Index(text(split["dicom_id"])))["split"].reindex(
            text(raw["dicom_id"])).to_numpy()
    df = assemble(metadata, {"image_id": image_ids, "path": paths, "patient_id": subject},
                  labels, y, meta, _extras(raw, ["dicom_id", *keys, *_MIMIC_META]))
    return df, root, labels


def _need_findings(table: Path, header: list[str]) -> None:
    if not any(c in CHEXPERT_LABELS for c in header):
        raise ManifestError(f"{table}: a MIMIC-CXR-JPG label table needs CheXpert finding columns "
                            f"({list(CHEXPERT_LABELS)[:3]} ...); found {header[:12]}")
