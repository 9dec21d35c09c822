"""Issue 13: does a head trained with lesion-level supervision, on the same Lite0 features, point at
the lesion? Prints one JSON object.

The 29 radiologist-boxed pneumonia images of ``nih_cxr14_pneumonia`` (28 patients, all training
images). EfficientNet-Lite0 at 224 px, the 7 x 7 x 1280 ``top_activation`` map of every image. A
logistic regression on *cells*: positives are the cells at least 30 % inside a box of the *other*
patients' images (leave one boxed patient out), negatives every cell of a random half of the normal
images. The map of a held-out boxed image is its 7 x 7 cell logits, scored by
``evaluate_localization`` beside the random, centre and lung-prior baselines. The same head, fitted
on all boxes, scores images by their highest cell (AUC on the unboxed pneumonia images against the
other half of the normals).

Usage::

    python bench/localization_box_head.py [--bootstrap 1000]   # ~2 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _nih_boxes import ci, load_boxed


def _cell_cover(mask: np.ndarray, n: int = 7) -> np.ndarray:
    """Fraction of each of the n x n cells covered by a boolean mask."""
    h, w = mask.shape
    return np.array([[mask[r * h // n:(r + 1) * h // n, c * w // n:(c + 1) * w // n].mean() for c in range(n)]
                     for r in range(n)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--cover", type=float, default=0.3, help="fraction of a cell inside a box to be positive")
    args = p.parse_args()

    import keras
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    import cxr_embed as cx
    from cxr_embed.io.boxes import boxes_to_mask

    t0 = time.perf_counter()
    loaded = load_boxed()
    if loaded is None:
        return
    m, boxes = loaded
    mm = m.set_index("image_id")
    bb = cx.Backbone("efficientnet_lite0", input_size=224)
    feat = keras.Model(bb.model.input, bb.model.get_layer(bb.feature_layer).output)
    ids = m["image_id"].astype(str).tolist()
    A = np.concatenate([np.asarray(feat(np.stack([cx.read_prepared(mm.loc[j, "path"], 224)[0] for j in ids[i:i + 32]]),
                                        training=False)) for i in range(0, len(ids), 32)])
    n_cells, dim = A.shape[1] * A.shape[2], A.shape[3]
    row = {iid: k for k, iid in enumerate(ids)}
    boxed = sorted(set(boxes["image_id"]))
    cover = {i: _cell_cover(boxes_to_mask(boxes[boxes["image_id"] == i],
                                          (int(mm.loc[i, "height"]), int(mm.loc[i, "width"]))), A.shape[1])
             for i in boxed}
    rng = np.random.default_rng(0)
    normals = np.array([i for i in ids if mm.loc[i, "pneumonia"] == 0])
    rng.shuffle(normals)
    neg_fit, neg_eval = normals[: len(normals) // 2], normals[len(normals) // 2:]
    X_neg = A[[row[i] for i in neg_fit]].reshape(-1, dim)

    def fit(train_ids):
        X_pos = np.concatenate([A[row[i]].reshape(-1, dim)[(cover[i] >= args.cover).ravel()] for i in train_ids])
        X = np.vstack([X_pos, X_neg])
        t = np.r_[np.ones(len(X_pos)), np.zeros(len(X_neg))]
        sc = StandardScaler().fit(X)
        return sc, LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000).fit(sc.transform(X), t), len(X_pos)

    def cells(model, iid):
        sc, lr, _ = model
        return lr.decision_function(sc.transform(A[row[iid]].reshape(-1, dim))).reshape(A.shape[1], A.shape[2])

    patient = mm.loc[boxed, "patient_id"].astype(str)
    maps, n_pos = {}, []
    with threadpool_limits(1):
        for pid in sorted(set(patient)):
            model = fit([i for i in boxed if patient[i] != pid])
            n_pos.append(model[2])
            for i in (i for i in boxed if patient[i] == pid):
                h, w = int(mm.loc[i, "height"]), int(mm.loc[i, "width"])
                maps[i] = np.asarray(Image.fromarray(cells(model, i).astype(np.float32)).resize((w, h), Image.BILINEAR))
        r = cx.evaluate_localization(None, m, boxes, maps=maps, n_bootstrap=args.bootstrap)
        full = fit(boxed)
        evaluated = [i for i in ids if (mm.loc[i, "pneumonia"] == 1 and i not in set(boxed))] + list(neg_eval)
        score = [cells(full, i).max() for i in evaluated]
        auc = roc_auc_score(mm.loc[evaluated, "pneumonia"].astype(int), score)

    diff = r.differences
    out = {"n_images": len(maps), "n_patients": int(patient.nunique()), "positive_cells_per_fit": int(np.median(n_pos)),
           "negative_cells": int(len(X_neg)), "cells_per_image": n_cells,
           "box_head": {"pointing": ci(r, "pointing"), "energy": ci(r, "energy"), "iou": ci(r, "iou")},
           "lung_prior": {"pointing": ci(r, "pointing", "lungs"), "energy": ci(r, "energy", "lungs")},
           "random": {"pointing": ci(r, "pointing", "random"), "energy": ci(r, "energy", "random")},
           "differences": diff.round(3).to_dict(orient="records"),
           "image_auc_max_cell": round(float(auc), 3), "n_auc_images": len(evaluated),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
