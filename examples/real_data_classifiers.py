"""Every classifier on real radiographs
====================================

Every classifier on efficientnet_lite0 embeddings of real radiographs: internal vs external AUC.

Usage:

    python examples/real_data_classifiers.py [--data /work/shared/data] [--out real_data_output]

Training set: ``nih_cxr14_pneumonia`` (NIH ChestX-ray14, adults, 717 images of 478 patients,
label ``pneumonia``); external test set: ``kermany_pediatric`` (Guangzhou, children, 1,525 images).
For each classifier of [`make_classifier`][cxr_embed.make_classifier] it reports the patient-grouped 5-fold
out-of-fold AUC on NIH with a 95 % patient-bootstrap CI and the AUC on Kermany of the model
refitted on all of NIH (never tuned on Kermany). Embeddings are cached in ``<out>/embeddings.h5``
and shared with ``real_data_comparison.py``. Skips with a message when the data is absent.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

CLASSIFIERS = ("logreg", "linear_svm", "rbf_svm", "knn", "random_forest", "extra_trees",
               "hist_gradient_boosting", "mlp", "xgboost")


def default_data_root() -> Path:
    env = os.environ.get("CXR_EMBED_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_root(), help="folder holding the shared datasets")
    p.add_argument("--out", type=Path, default=Path("real_data_output"), help="output folder")
    p.add_argument("--label", default="pneumonia")
    p.add_argument("--classifiers", default=",".join(CLASSIFIERS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--backbone", default="efficientnet_lite0")
    args = p.parse_args(argv)
    train_dir, ext_dir = args.data / "nih_cxr14_pneumonia", args.data / "kermany_pediatric"
    if not (train_dir / "labels.csv").is_file() or not (ext_dir / "labels.csv").is_file():
        print(f"skipping: real data absent ({train_dir} / {ext_dir} not found)")
        return 0

    import cxr_embed

    args.out.mkdir(parents=True, exist_ok=True)
    train = cxr_embed.load_manifest(train_dir)
    ext = cxr_embed.load_manifest(ext_dir)
    train = train[train[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    ext = ext[ext[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    backbone = cxr_embed.Backbone(args.backbone)
    store = cxr_embed.EmbeddingStore(args.out / "embeddings.h5")
    t = time.perf_counter()
    for df in (train, ext):
        print(cxr_embed.extract(df, backbone, store, progress=False), flush=True)
    print(f"extraction: {time.perf_counter() - t:.1f} s")
    X, X_ext = store.load(backbone, train["image_id"])[1], store.load(backbone, ext["image_id"])[1]
    y, y_ext = train[args.label].to_numpy(), ext[args.label].to_numpy()

    rows = []
    for name in args.classifiers.split(","):
        t = time.perf_counter()
        res = cxr_embed.external_validation(
            cxr_embed.make_classifier(name, random_state=0), X, y, X_ext, y_ext, groups_train=train["patient_id"],
            groups_ext=ext["patient_id"], labels=[args.label], internal_splits=args.folds,
            n_bootstrap=args.n_bootstrap, random_state=0)
        s = res.summary.set_index("setting")
        rows.append({"classifier": name,
                     "internal_auc": s.loc["internal", "auc"], "internal_ci": _ci(s.loc["internal"]),
                     "external_auc": s.loc["external", "auc"], "external_ci": _ci(s.loc["external"]),
                     "seconds": round(time.perf_counter() - t, 1)})
        r = rows[-1]
        print(f"{name}: internal {r['internal_auc']:.3f} {r['internal_ci']}, external {r['external_auc']:.3f} "
              f"{r['external_ci']} ({r['seconds']} s)", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "classifiers.csv", index=False)
    print(f"\n{args.backbone} embeddings, label {args.label}: NIH (n={len(train)}, {train['patient_id'].nunique()} "
          f"patients) patient-grouped {args.folds}-fold CV vs Kermany external (n={len(ext)})")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _ci(row) -> str:
    return f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
