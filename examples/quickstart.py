"""Quickstart
==========

Synthetic radiographs -> embeddings -> patient-grouped CV, in a few lines of the public API:
[`load_manifest`][cxr_embed.load_manifest], [`extract`][cxr_embed.extract],
[`cross_validate_grouped`][cxr_embed.cross_validate_grouped] and the out-of-fold ROC curves
([`plot_roc`][cxr_embed.plot_roc]).

Usage:

    python examples/quickstart.py                       # 80 images, efficientnet_lite0 (offline weights)
    python examples/quickstart.py --n 24 --backbone mobilenet_v2 --weights none --input-size 32   # smoke run

Everything after the CNN works on the cached array ``X`` of shape (n_images, dim): the second
run of this script embeds nothing (the HDF5 store already holds every image). The ROC curves
are written to ``<out>/roc.png``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cxr_embed
from cxr_embed.datasets import make_synthetic_cxr, write_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=80, help="images (2 per patient; default 80)")
    p.add_argument("--size", type=int, default=256, help="synthetic image size (default 256)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr_embed_quickstart_"))

    # 1. a labelled dataset on disk (PNG + labels.csv), then its manifest
    ds = make_synthetic_cxr(args.n, site="A", size=args.size, seed=0, images_per_patient=2)
    df = cxr_embed.load_manifest(write_dataset(ds, out / "data", format="png"))
    labels = df.attrs["labels"]  # ['opacity', 'effusion', 'cardiomegaly']

    # 2. embeddings, computed once and cached
    backbone = cxr_embed.Backbone(args.backbone, weights=None if args.weights == "none" else args.weights,
                                  input_size=args.input_size)
    store = cxr_embed.EmbeddingStore(out / "embeddings.h5")
    print(cxr_embed.extract(df, backbone, store, progress=False))
    _, X = store.load(backbone, df["image_id"])

    # 3. one classifier per label, patient-grouped 5-fold CV, AUC with 95 % patient-bootstrap CI
    model = cxr_embed.MultiLabelClassifier(cxr_embed.make_classifier("logreg"))
    cv = cxr_embed.cross_validate_grouped(model, X, df[labels], df["patient_id"], n_splits=5, random_state=0,
                                          n_bootstrap=200)
    print(cv.summary[["auc", "ci_low", "ci_high", "n", "n_pos", "n_patients"]].round(3).to_string())

    # 4. the out-of-fold ROC curves, one per label (a PNG beside the store)
    cxr_embed.plot_roc(df[labels], cv.oof_mean, labels=labels, path=out / "roc.png",
                       title="Out-of-fold ROC curves (patient-grouped 5-fold CV)")
    print(f"macro AUC {cv.mean_auc:.3f}; files in {out}")
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
