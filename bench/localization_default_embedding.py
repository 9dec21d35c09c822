"""Issue 13: the default pipeline (``DEFAULT_EMBEDDING`` + ``logreg``) explained on the 29 radiologist-boxed
pneumonia images of ``nih_cxr14_pneumonia``; prints one JSON object.

The classifier (``logreg`` by default, or ``--classifier xgboost`` ...) is fitted on all 717 images' default
embeddings; each boxed image is explained by ``--method`` (``auto``: the sum of the class activation maps of the
embedding's five passes, ``saliency/composite_cam.py``, for a linear head; ``occlusion``: blurred patches
through every pass and the classifier, ``saliency/composite_occlusion.py``) and scored by
``evaluate_localization`` beside the random, centre and lung-prior baselines; ``--deletion`` adds the deletion
AUC of each map and of a smooth random map on the same image (faithfulness).

Usage::

    python bench/localization_default_embedding.py [--store emb.h5] [--method occlusion] [--deletion]
    # ~15 min to embed; then ~2 min (CAM), ~8 min (occlusion), +5 min for --deletion
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _nih_boxes import ci, load_boxed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None, help="store holding (or to receive) the embedding's passes")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--classifier", default="logreg", help="make_classifier name (default logreg)")
    p.add_argument("--method", default="auto", help="explanation method (default auto)")
    p.add_argument("--deletion", action="store_true", help="also measure deletion AUCs")
    args = p.parse_args()

    from threadpoolctl import threadpool_limits

    import cxr_embed as cx
    from cxr_embed.embed.composite import _Embeddings

    boxed = load_boxed()
    if boxed is None:
        return
    m, boxes = boxed
    comp = cx.CompositeEmbedding(cx.DEFAULT_EMBEDDING)
    store = args.store or str(Path(tempfile.mkdtemp()) / "passes.h5")
    t0 = time.perf_counter()
    ids, X = _Embeddings(store, {}, {"batch_size": 32}, backbones=comp._backbones).matrix(comp.embedding, m)
    embed_s = time.perf_counter() - t0
    y = m.set_index("image_id").loc[ids, "pneumonia"].to_numpy().astype(int)
    t0 = time.perf_counter()
    with threadpool_limits(1):
        clf = cx.make_classifier(args.classifier, random_state=0).fit(X, y)
        r = cx.evaluate_localization(clf, m, boxes, backbone=comp, method=args.method, deletion=args.deletion,
                                     n_bootstrap=args.bootstrap)
    metrics = ("pointing", "energy", "iou") + (("deletion_auc",) if args.deletion else ())
    out = {"embedding": cx.DEFAULT_EMBEDDING, "classifier": args.classifier, "method": r.method,
           "explanation": {k: ci(r, k) for k in metrics}}
    if args.deletion:
        out["random_deletion_auc"] = ci(r, "deletion_auc", "random")
    for base in ("lungs", "random", "centre"):
        out[base] = {k: ci(r, k, base) for k in ("pointing", "energy")}
    out["differences"] = r.differences.round(3).to_dict(orient="records")
    out["seconds"] = {"embed": round(embed_s, 1), "explain": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
