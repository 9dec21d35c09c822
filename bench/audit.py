"""Benchmark of cxr_embed.audit_embeddings; prints one JSON object on stdout (and nothing else).

Synthetic embeddings of ``--n`` images x ``--dim`` dimensions (about two images per patient) with
four attributes (sex, view, site with three levels, age) planted into a few directions and a
label tied to the view, i.e. a shortcut the audit must flag. Measures:

- ``audit_seconds`` (wall) and ``audit_cpu_seconds`` (CPU time of all threads, which other jobs on a
  shared machine do not inflate): the whole audit (encoded attributes with their shuffled baselines, the
  label's classifier, shortcut table, subgroup AUCs, re-identification, PCA map), with every
  CI from ``--n-bootstrap`` patient resamples (goal: under 60 s for 5,000 x 1,280 on two cores);
- ``naive_seconds`` (``--naive``): the same grouped cross-validated predictions done the obvious
  way, one ``StandardScaler + LogisticRegression`` per target and fold with ``cross_val_predict``,
  without any statistics.

Usage::

    python bench/audit.py                      # 5,000 x 1,280, 1,000 resamples
    python bench/audit.py --n 400 --dim 64 --n-bootstrap 50 --no-naive   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_data(n: int, dim: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    patient = np.sort(rng.integers(0, max(2, n // 2), n))
    n_pat = patient.max() + 1
    sex = np.where(rng.random(n_pat) < 0.5, "F", "M")[patient]
    age = np.clip(rng.normal(55, 15, n_pat), 18, 95)[patient]
    site = rng.choice(["A", "B", "C"], n_pat)[patient]
    view = np.where(rng.random(n) < 0.5, "AP", "PA")
    y = (rng.random(n) < np.where(view == "AP", 0.35, 0.65)).astype(float)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X += 0.5 * rng.normal(size=(n_pat, dim)).astype(np.float32)[patient]  # patient identity
    directions = rng.normal(size=(6, dim)).astype(np.float32) / np.sqrt(dim)
    X += 8 * np.outer(view == "AP", directions[0]) + 4 * np.outer(sex == "F", directions[1])
    X += 3 * np.outer((site == "B").astype(np.float32) - (site == "C"), directions[2]) + np.outer((age - 55) / 15, directions[3]) * 3
    X += 3 * np.outer(y, directions[4])
    manifest = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "patient_id": [f"p{p}" for p in patient],
                             "sex": sex, "age": age, "site": site, "view": view, "label": y})
    return X, manifest


def naive(X, manifest, cv: int, seed: int) -> float:
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    groups = manifest["patient_id"].to_numpy()
    folds = list(StratifiedGroupKFold(cv, shuffle=True, random_state=seed).split(X, manifest["label"], groups))
    for col in ("label", "sex", "view", "site"):
        cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000)), X,
                          manifest[col].astype(str), cv=folds, method="predict_proba")
    cross_val_predict(make_pipeline(StandardScaler(), LinearRegression()), X, manifest["age"], cv=folds)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--map", default="pca")
    p.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from cxr_embed.evaluate.audit import audit_embeddings

    X, manifest = make_data(args.n, args.dim, args.seed)
    audit_embeddings(X[:60], manifest.iloc[:60], label="label", cv=2, n_bootstrap=10, map=None)  # imports
    t, cpu = time.perf_counter(), time.process_time()
    audit = audit_embeddings(X, manifest, label="label", cv=args.cv, n_bootstrap=args.n_bootstrap,
                             random_state=args.seed, map=None if args.map == "none" else args.map)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    enc = audit.encoded[audit.encoded["encoded"].notna()].set_index("attribute")
    result = {
        "n": args.n, "dim": args.dim, "cv": args.cv, "n_bootstrap": args.n_bootstrap, "map": args.map,
        "cpu_count": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 2),
        "audit_seconds": round(seconds, 2),
        "audit_cpu_seconds": round(cpu_seconds, 2),  # all threads; independent of other jobs' load
        "encoded": {a: round(float(v), 3) for a, v in enc["value"].items()},
        "flagged_shortcuts": audit.shortcuts.loc[audit.shortcuts["flag"].astype(bool), "attribute"].tolist(),
        "reid_top1": round(float(audit.reidentification["rate"].iloc[0]), 3),
        "n_flags": len(audit.flags),
    }
    if args.naive:
        result["naive_seconds"] = round(naive(X, manifest, args.cv, args.seed), 2)
        result["speedup_vs_naive"] = round(result["naive_seconds"] / seconds, 2)
    result["goals"] = {"audit_under_60s": bool(seconds < 60.0)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
