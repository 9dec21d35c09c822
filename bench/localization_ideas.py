"""Issue 13: explanation ideas measured on the 29 radiologist-boxed pneumonia images of
``nih_cxr14_pneumonia`` (training images only); prints one JSON object.

EfficientNet-Lite0 (224 px) + ``make_classifier("logreg")`` fitted on all 717 images, then per idea the
pointing game and energy in the boxes with patient-bootstrap CIs (``evaluate_localization``), beside
the lung-prior baseline:

- ``gradcam``, ``gradcam++``, ``layercam``, ``faster-scorecam``: the library's maps of that model;
- ``gradcam_448``: the same head explained through a 448 px pass of the backbone;
- ``view_erased``: view (AP/PA) projected out of the embeddings (iterative nullspace projection until
  a logistic regression decodes it at AUC < 0.6), head refitted, Grad-CAM of the result;
- ``cam_minus_normals``: the signed CAM minus the mean CAM of 150 normal training images.

Usage::

    python bench/localization_ideas.py [--store emb.h5] [--bootstrap 1000]   # ~8 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np

from _nih_boxes import ci as _ci
from _nih_boxes import load_boxed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None, help="HDF5 store to extract into / read from (default: a temporary one)")
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args()

    import keras
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    import cxr_embed as cx

    boxed = load_boxed(scaled=False)
    if boxed is None:
        return
    m, boxes = boxed
    bb = cx.Backbone("efficientnet_lite0", input_size=224)
    store_path = args.store or str(Path(tempfile.mkdtemp()) / "emb.h5")
    cx.extract(m, bb, store_path, progress=False)
    ids, X = cx.EmbeddingStore(store_path, mode="r").load(bb, m["image_id"].astype(str))
    mm = m.set_index("image_id").loc[ids]
    y = mm["pneumonia"].to_numpy().astype(int)
    out: dict = {"n_images": int(boxes["image_id"].nunique())}

    def score(name, model, backbone=bb, method="auto", maps=None):
        r = cx.evaluate_localization(model, m, boxes, backbone=backbone, method=method, maps=maps,
                                     n_bootstrap=args.bootstrap)
        out[name] = {"pointing": _ci(r), "energy": _ci(r, "energy")}
        out.setdefault("lung_prior", {"pointing": _ci(r, "pointing", "lungs"), "energy": _ci(r, "energy", "lungs")})
        print(name, out[name], flush=True)

    with threadpool_limits(1):
        base = cx.make_classifier("logreg").fit(X, y)
        for method in ("gradcam", "gradcam++", "layercam", "faster-scorecam"):
            score(method, base, method=method)
        score("gradcam_448", base, backbone=cx.Backbone("efficientnet_lite0", input_size=448), method="gradcam")

        # view erased: iterative nullspace projection in the classifier's standardised space
        Z = base.named_steps["scale"].transform(X)
        view = (mm["view"] == "AP").to_numpy().astype(int)
        P = np.eye(Z.shape[1])
        for _ in range(50):
            lr = LogisticRegression(C=0.01, max_iter=5000, class_weight="balanced").fit(Z @ P, view)
            if roc_auc_score(view, lr.decision_function(Z @ P)) < 0.6:
                break
            w = P @ lr.coef_[0]
            P -= np.outer(w, w) / float(w @ w)
        head = LogisticRegression(C=0.01, max_iter=5000, class_weight="balanced").fit(Z @ P, y)
        erased = copy.deepcopy(base)
        erased.named_steps["clf"].coef_ = (P @ head.coef_[0])[None, :]
        erased.named_steps["clf"].intercept_ = head.intercept_
        score("view_erased", erased, method="gradcam")

        # signed CAM relative to the mean CAM of normal films
        w = base.named_steps["clf"].coef_[0] / base.named_steps["scale"].scale_
        feat = keras.Model(bb.model.input, bb.model.get_layer(bb.feature_layer).output)
        path_of = m.set_index("image_id")["path"]

        def cams(image_ids):
            return np.concatenate([np.asarray(feat(np.stack([cx.read_prepared(path_of[i], 224)[0]
                                                              for i in image_ids[k:k + 16]]))) @ w
                                   for k in range(0, len(image_ids), 16)])

        boxed = sorted(set(boxes["image_id"]))
        normals = list(np.random.default_rng(0).choice(mm.index[y == 0].to_numpy(), 150, replace=False))
        ref = cams(normals).mean(0)

        def up(c, i):
            return np.asarray(Image.fromarray(c.astype(np.float32)).resize(
                (int(mm.loc[i, "width"]), int(mm.loc[i, "height"])), Image.BILINEAR))

        score("cam_minus_normals", None, maps={i: up(c - ref, i) for i, c in zip(boxed, cams(boxed))})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
