"""Issue 13: the default pipeline (``DEFAULT_EMBEDDING`` + ``logreg``) explained on the 29 radiologist-boxed
pneumonia images of ``nih_cxr14_pneumonia``; prints one JSON object.

The classifier is fitted on all 717 images' default embeddings; each boxed image is explained by the sum of
the class activation maps of the embedding's five passes (``saliency/composite_cam.py``) and scored by
``evaluate_localization`` beside the random, centre and lung-prior baselines.

Usage::

    python bench/localization_default_embedding.py [--store emb.h5]   # ~15 min to embed, then ~2 min
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
        clf = cx.make_classifier("logreg").fit(X, y)
        r = cx.evaluate_localization(clf, m, boxes, backbone=comp, n_bootstrap=args.bootstrap)
    out = {"embedding": cx.DEFAULT_EMBEDDING, "method": r.method,
           "explanation": {k: ci(r, k) for k in ("pointing", "energy", "iou")}}
    for base in ("lungs", "random", "centre"):
        out[base] = {k: ci(r, k, base) for k in ("pointing", "energy")}
    out["differences"] = r.differences.round(3).to_dict(orient="records")
    out["seconds"] = {"embed": round(embed_s, 1), "explain": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
