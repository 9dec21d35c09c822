"""NIH ChestX-ray14 layout
=======================

``Data_Entry_2017.csv`` + ``images/``, one label, grouped CV, AUC by view.

Usage:

    python examples/nih_layout.py                                   # writes a tiny fake NIH tree
    python examples/nih_layout.py --data /work/shared/data/nih_cxr14_pneumonia --label pneumonia
    python examples/nih_layout.py --n 40 --backbone mobilenet_v2 --weights none --input-size 32

Without ``--data`` it renders synthetic radiographs as ``images/00000001_000.png`` with a
``Data_Entry_2017.csv`` in the official format (``Finding Labels`` joined by ``|``, ``No Finding``
otherwise; opacity is written as Pneumonia, effusion as Effusion) and loads it with
``load_manifest(format="nih")``. With ``--data`` any manifest ``load_manifest`` reads is used
(the shared ``nih_cxr14_pneumonia`` folder holds a generic ``labels.csv``). The AUC is also shown
per view position: on the shared NIH data the prevalence differs by view (41 % of AP, 63 % of PA
films are pneumonia-positive), a shortcut a model can learn.
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

_FINDINGS = {"opacity": "Pneumonia", "effusion": "Effusion", "cardiomegaly": "Cardiomegaly"}


def write_fake_nih(root: Path, n: int, *, size: int = 256, seed: int = 0) -> Path:
    """Synthetic images in the NIH ChestX-ray14 layout; returns ``Data_Entry_2017.csv``."""
    from cxr_embed.datasets import make_synthetic_cxr

    ds = make_synthetic_cxr(n, site="A", size=size, seed=seed, images_per_patient=2)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, follow = [], {}
    for i, r in enumerate(ds.labels.itertuples(index=False)):
        pid = int(str(r.patient_id).lstrip("AP")) + 1
        k = follow.get(pid, 0)
        follow[pid] = k + 1
        name = f"{pid:08d}_{k:03d}.png"
        Image.fromarray(np.round(ds.images[i] * 255).astype(np.uint8)).save(root / "images" / name)
        found = [v for f, v in _FINDINGS.items() if getattr(r, f) == 1]
        rows.append({"Image Index": name, "Finding Labels": "|".join(found) or "No Finding", "Follow-up #": k,
                     "Patient ID": pid, "Patient Age": int(r.age), "Patient Gender": r.sex,
                     "View Position": r.view, "OriginalImage[Width": size, "Height]": size,
                     "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143})
    csv = root / "Data_Entry_2017.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="NIH folder/CSV or any manifest (default: fake tree)")
    p.add_argument("--label", default="pneumonia", help="label column (default pneumonia)")
    p.add_argument("--classifier", default="logreg")
    p.add_argument("--n", type=int, default=120, help="fake images (default 120)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr_embed_nih_"))

    if args.data is None:
        df = cxr_embed.load_manifest(write_fake_nih(out / "fake", args.n, size=args.size), format="nih")
    else:
        df = cxr_embed.load_manifest(args.data)
    df = df[df[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    print(f"{len(df)} images of {df['patient_id'].nunique()} patients ({df.attrs.get('format')}); "
          f"{int(df[args.label].sum())} {args.label}-positive")

    backbone = cxr_embed.Backbone(args.backbone, weights=None if args.weights == "none" else args.weights,
                                  input_size=args.input_size)
    store = cxr_embed.EmbeddingStore(out / "embeddings.h5")
    print(cxr_embed.extract(df, backbone, store, progress=False))
    _, X = store.load(backbone, df["image_id"])

    model = cxr_embed.make_classifier(args.classifier, random_state=0)
    cv = cxr_embed.cross_validate_grouped(model, X, df[args.label].to_numpy(), df["patient_id"], n_splits=args.folds,
                                          random_state=0, labels=[args.label], n_bootstrap=500)
    print(f"\n{args.classifier}, patient-grouped {args.folds}-fold CV:")
    print(cv.summary[["auc", "ci_low", "ci_high", "n", "n_pos", "n_patients"]].round(3).to_string())
    if "view" in df.columns and df["view"].nunique() > 1:
        m = cxr_embed.evaluate_predictions(df[args.label].to_numpy(), cv.oof_mean[:, 0], labels=[args.label],
                                           groups=df["patient_id"], subgroups={"view": df["view"].astype(str)},
                                           n_bootstrap=200, random_state=0)
        by_view = m[(m["metric"] == "auc") & (m["subgroup"] == "view")][["level", "value", "n", "n_pos"]]
        prevalence = df.groupby("view")[args.label].mean().rename("prevalence")
        print("\nout-of-fold AUC by view (the prevalence differs by view on the real NIH data):")
        print(by_view.rename(columns={"value": "auc"}).set_index("level").join(prevalence).round(3).to_string())
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
