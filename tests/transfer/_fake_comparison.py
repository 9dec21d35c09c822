"""A ComparisonResult of the demo's shape (6 approaches, 3 labels, internal + external) from random
scores, built in a second without Keras: the report tests need its shape, not a real fit."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_embed.transfer import compare as compare_mod

APPROACHES = {
    "efficientnet_lite0 + logreg": "embeddings",
    "efficientnet_lite0 + random_forest": "embeddings",
    "embeddings: simple average": "embeddings",
    "embeddings: entropy-weighted average": "embeddings",
    "stacking (efficientnet_lite0-source; meta <logreg>)": "stacking",
    "fine-tuned efficientnet_lite0-source": "fine-tuning",
}


def fake_comparison(labels=("opacity", "effusion", "cardiomegaly"), *, n=60, n_external=30, external=True,
                    approaches=None, seed=0, strength=None):
    """Scores of approach ``i`` separate the classes with strength ``strength[i]`` (default increasing)."""
    rng = np.random.default_rng(seed)
    labels = list(labels)
    names = dict(approaches or APPROACHES)
    strength = strength or [0.4 + 0.25 * i for i in range(len(names))]
    groups = np.repeat(np.arange(n // 2), 2).astype(str)
    ext_groups = np.repeat(np.arange(1000, 1000 + n_external // 2), 2).astype(str)
    y = rng.integers(0, 2, (n, len(labels))).astype(float)
    y_ext = rng.integers(0, 2, (n_external, len(labels))).astype(float)
    y[0, 0] = np.nan  # a missing label

    def scores(truth, k):
        return 1 / (1 + np.exp(-(k * (2 * np.nan_to_num(truth) - 1) + rng.normal(0, 1.5, truth.shape))))

    oof = {a: scores(y, strength[i]) for i, a in enumerate(names)}
    ext = {a: scores(y_ext, strength[::-1][i]) for i, a in enumerate(names)} if external else {}
    wall = {a: 1.5 * (i + 1) for i, a in enumerate(names)}
    tables = []
    for setting, truth, sc, g in (("internal", y, oof, groups), ("external", y_ext, ext, ext_groups)):
        if not sc:
            continue
        rows = []
        for a, s in sc.items():
            rows += compare_mod._evaluate(a, names[a], truth, s, g, labels, 50, 0)
        tab = pd.DataFrame(rows)
        tab["wall_time_s"] = tab["approach"].map(wall)
        tab = compare_mod._add_delong(tab, truth, sc, labels)
        tab.insert(0, "setting", setting)
        tables.append(tab)
    table = pd.concat(tables, ignore_index=True)[
        ["setting", "family", "approach", "label", "auc", "ci_low", "ci_high", "delong_p", "best", "wall_time_s",
         "n", "n_pos", "n_patients"]]
    return compare_mod.ComparisonResult(
        table=table, labels=labels, image_ids=np.array([f"B{k:03d}" for k in range(n)]), groups=groups, y_true=y,
        oof=oof, splits=[], fold=np.arange(n) % 3, timings={"setup": 0.1, "extract": 3.2, "evaluation": 1.0},
        families=names, external_ids=np.array([f"C{k:03d}" for k in range(n_external)]) if external else None,
        external_groups=ext_groups if external else None, y_external=y_ext if external else None, external=ext,
        notes=["Synthetic scores <not a model> & co."])


def overlays(folder, n=2):
    """Saliency overlays as the demo writes them (save_overlay, with a lesion outline)."""
    from cxr_embed.saliency.maps import Saliency, save_overlay

    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    out = {}
    for k in range(n):
        image = np.clip(0.3 + 0.4 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 4), 0, 1).astype(np.float32)
        sal = np.exp(-((xx - 0.3 - 0.3 * k) ** 2 + (yy - 0.4) ** 2) * 30).astype(np.float32)
        lesion = ((xx - 0.35) ** 2 + (yy - 0.4) ** 2) < 0.01
        s = Saliency(sal, "gradcam", None if k else "opacity", 0.9 - 0.1 * k, sal, image)
        png = save_overlay(s, folder / f"overlay{k}.png", contour=lesion)
        out[f"B{k:03d}: opacity, p = {s.score:.2f}. Grad-CAM <model {k}>; white outline: the true lesion"] = png
    return out
