"""CheXpert layout and uncertain labels
====================================

Uncertain labels (-1) under U-Ones vs U-Ignore, with patient-grouped CV.

Usage:

    python examples/chexpert_layout.py                          # writes a tiny fake CheXpert tree
    python examples/chexpert_layout.py --data CheXpert-v1.0-small/train.csv --limit 2000
    python examples/chexpert_layout.py --n 40 --backbone mobilenet_v2 --weights none --input-size 32

Without ``--data`` it renders synthetic radiographs into the official layout
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` and ``train.csv`` with the 14
CheXpert columns, blanks for unmentioned findings and ``-1.0`` for uncertain ones: about a
quarter of the findings are reported as uncertain, as the CheXpert labeller does), loads it with
``load_manifest(format="chexpert")`` and compares the uncertainty policies U-Ones and U-Ignore
(Irvin et al. 2019; Gozzi et al. 2022). AUCs are always computed on the certain labels only.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import cxr_embed

# synthetic finding -> CheXpert column
_COLUMNS = {"opacity": "Lung Opacity", "effusion": "Pleural Effusion", "cardiomegaly": "Cardiomegaly"}


def write_fake_chexpert(root: Path, n: int, *, size: int = 256, seed: int = 0, uncertain: float = 0.25) -> Path:
    """Synthetic images in the CheXpert-v1.0-small layout; returns ``train.csv``."""
    from cxr_embed.datasets import make_synthetic_cxr

    rng = np.random.default_rng(seed)
    ds = make_synthetic_cxr(n, site="A", size=size, seed=seed, images_per_patient=2)
    base = root / "CheXpert-v1.0-small"
    rows, study = [], {}
    for i, r in enumerate(ds.labels.itertuples(index=False)):
        pnum = int(str(r.patient_id).lstrip("AP")) + 1
        study[pnum] = study.get(pnum, 0) + 1
        rel = f"CheXpert-v1.0-small/train/patient{pnum:05d}/study{study[pnum]}/view1_frontal.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(ds.images[i] * 255).astype(np.uint8)).save(root / rel, quality=95)
        row = {"Path": rel, "Sex": "Female" if r.sex == "F" else "Male", "Age": int(r.age),
               "Frontal/Lateral": "Frontal", "AP/PA": r.view}
        any_finding = False
        for finding, col in _COLUMNS.items():
            v = float(getattr(r, finding))
            any_finding |= v == 1.0
            if rng.random() < uncertain:
                row[col] = -1.0  # "possible opacity": the labeller's uncertain mention
            elif v == 1.0 or rng.random() < 0.7:
                row[col] = v
            else:
                row[col] = np.nan  # not mentioned in the report
        row["No Finding"] = np.nan if any_finding else 1.0
        rows.append(row)
    csv = base / "train.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="a CheXpert train.csv / valid.csv (default: fake tree)")
    p.add_argument("--limit", type=int, default=None, help="use the first N rows of --data")
    p.add_argument("--labels", default=None, help="comma-separated labels (default: those of the fake tree)")
    p.add_argument("--n", type=int, default=120, help="fake images (default 120)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr_embed_chexpert_"))

    csv = args.data if args.data is not None else write_fake_chexpert(out / "fake", args.n, size=args.size)
    df = cxr_embed.load_manifest(csv, format="chexpert")
    if args.limit:
        df = df.head(args.limit).reset_index(drop=True)
    labels = (args.labels.split(",") if args.labels else
              [c for c in ("lung_opacity", "pleural_effusion", "cardiomegaly") if c in df.attrs["labels"]])
    print(f"{len(df)} images of {df['patient_id'].nunique()} patients from {csv}")
    counts = pd.DataFrame({lab: df[lab].value_counts(dropna=False) for lab in labels}).fillna(0).astype(int)
    print("label values (1 positive, 0 negative, -1 uncertain, NaN not mentioned):")
    print(counts.to_string())

    backbone = cxr_embed.Backbone(args.backbone, weights=None if args.weights == "none" else args.weights,
                                  input_size=args.input_size)
    store = cxr_embed.EmbeddingStore(out / "embeddings.h5")
    cxr_embed.extract(df, backbone, store, progress=False)
    _, X = store.load(backbone, df["image_id"])

    rows = []
    for policy in ("ones", "ignore"):
        model = cxr_embed.MultiLabelClassifier(cxr_embed.make_classifier("logreg"), policy=policy)
        cv = cxr_embed.cross_validate_grouped(model, X, df[labels], df["patient_id"], n_splits=args.folds,
                                              random_state=0, n_bootstrap=200)
        for lab, r in cv.summary.iterrows():
            rows.append({"policy": f"U-{policy.capitalize()}", "label": lab, "auc": r.auc, "ci_low": r.ci_low,
                         "ci_high": r.ci_high, "n_eval": r.n})
    table = pd.DataFrame(rows)
    print("\nOut-of-fold AUC on the certain labels (same folds for both policies):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
