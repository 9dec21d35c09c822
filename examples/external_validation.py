"""External validation
===================

Fit on one manifest, score on another, beside internal grouped CV
([`external_validation`][cxr_embed.external_validation]).

Usage:

    python examples/external_validation.py                       # synthetic site A -> site B
    python examples/external_validation.py --train /work/shared/data/nih_cxr14_pneumonia \
        --external /work/shared/data/kermany_pediatric --label pneumonia
    python examples/external_validation.py --n 40 --backbone mobilenet_v2 --weights none --input-size 32

The external set is never used to fit or tune anything: each classifier is refitted on all
training images and scored once on the external images (patient-bootstrap CIs). Internal
(patient-grouped CV) and external AUCs are printed side by side, because in-site gains can be
shortcuts that do not travel (Gozzi et al. 2022; DESIGN.md).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

import cxr_embed


def _synthetic(out: Path, n: int, size: int) -> tuple[Path, Path]:
    from cxr_embed.datasets import SITES, make_synthetic_cxr, write_dataset

    paths = []
    for site, seed in (("A", 0), ("B", 1)):
        ds = make_synthetic_cxr(n, site=site, size=size, seed=seed, images_per_patient=2)
        paths.append(write_dataset(ds, out / site, format="dicom", monochrome1=SITES[site].monochrome1))
    return paths[0], paths[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=None, help="training manifest (default: synthetic site A)")
    p.add_argument("--external", type=Path, default=None, help="external manifest (default: synthetic site B)")
    p.add_argument("--label", default="opacity", help="label column in both (default opacity)")
    p.add_argument("--classifiers", default="logreg,random_forest")
    p.add_argument("--n", type=int, default=120, help="synthetic images per site (default 120)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr_embed_external_"))

    if (args.train is None) != (args.external is None):
        p.error("give both --train and --external, or neither (synthetic site A -> site B)")
    if args.train is None:
        args.train, args.external = _synthetic(out / "data", args.n, args.size)
    train, ext = (cxr_embed.load_manifest(x) for x in (args.train, args.external))
    train = train[train[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    ext = ext[ext[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    for name, df in (("train", train), ("external", ext)):
        print(f"{name:8s} {len(df)} images, {df['patient_id'].nunique()} patients, "
              f"{int(df[args.label].sum())} positive ({df.attrs.get('source')})")

    backbone = cxr_embed.Backbone(args.backbone, weights=None if args.weights == "none" else args.weights,
                                  input_size=args.input_size)
    store = cxr_embed.EmbeddingStore(out / "embeddings.h5")
    for df in (train, ext):
        print(cxr_embed.extract(df, backbone, store, progress=False))
    X_train = store.load(backbone, train["image_id"])[1]
    X_ext = store.load(backbone, ext["image_id"])[1]

    rows = []
    for name in args.classifiers.split(","):
        res = cxr_embed.external_validation(
            cxr_embed.make_classifier(name, random_state=0), X_train, train[args.label].to_numpy(), X_ext,
            ext[args.label].to_numpy(), groups_train=train["patient_id"], groups_ext=ext["patient_id"],
            labels=[args.label], internal_splits=args.folds, n_bootstrap=500, random_state=0)
        for r in res.summary.itertuples():
            rows.append({"classifier": name, "setting": r.setting, "auc": r.auc, "ci_low": r.ci_low,
                         "ci_high": r.ci_high, "n": r.n, "n_patients": r.n_patients})
    table = pd.DataFrame(rows)
    print(f"\n{args.label}: internal (grouped {args.folds}-fold CV on the training set) vs external")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
