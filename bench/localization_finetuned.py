"""Issue 13: a CNN fine-tuned end to end on ``nih_cxr14_pneumonia`` (image labels only), explained on the
29 radiologist-boxed pneumonia images; prints one JSON object.

EfficientNet-Lite0 (ImageNet weights, offline) is fine-tuned by ``cxr_embed.finetune`` on all 717 images
(its own patient-grouped validation split picks the epoch), then each boxed image is explained by every
``--methods`` entry (``auto``: Grad-CAM of the label's logit, the default for CNNs; ``occlusion``: blurred
patches through the CNN) and scored by ``evaluate_localization`` with deletion curves, beside the random,
centre and lung-prior baselines. The question it answers: does end-to-end training on the image labels
move the model's evidence onto the lesions, where the embedding heads' evidence is not?

Usage::

    python bench/localization_finetuned.py [--trainable-layers all] [--epochs 8] [--methods auto occlusion]
    # two cores: ~4 min to fine-tune the top 6 layers (~15 min for all), ~1.5 min Grad-CAM, ~2 min occlusion
"""
from __future__ import annotations

import argparse
import json
import time

from _nih_boxes import ci, load_boxed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainable-layers", default="6", help="layers unfrozen from the top, or 'all' (default 6)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--methods", nargs="+", default=["auto", "occlusion"])
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import cxr_embed as cx

    boxed = load_boxed()
    if boxed is None:
        return
    m, boxes = boxed
    layers = args.trainable_layers if args.trainable_layers == "all" else int(args.trainable_layers)
    bb = cx.Backbone("efficientnet_lite0", input_size=args.input_size)
    t0 = time.perf_counter()
    ft = cx.finetune(bb, m, "pneumonia", trainable_layers=layers, epochs=args.epochs, random_state=args.seed,
                     workers=2)
    out = {"backbone": "efficientnet_lite0", "input_size": args.input_size, "trainable_layers": args.trainable_layers,
           "unfrozen_layers": len(ft.trainable_layers),
           "epochs": args.epochs, "best_epoch": ft.best_epoch, "val_auc": round(ft.val_auc, 3),
           "seconds": {"finetune": round(time.perf_counter() - t0, 1)}}
    val_patients = set(ft.val_patients)
    in_val = m[m["image_id"].isin(set(boxes["image_id"]))]["patient_id"].astype(str).isin(val_patients)
    out["boxed_images_in_validation"] = int(in_val.sum())
    for method in args.methods:
        t0 = time.perf_counter()
        r = cx.evaluate_localization(ft.model, m, boxes, method=method, deletion=True, n_bootstrap=args.bootstrap,
                                     random_state=args.seed)
        out[r.method] = {k: ci(r, k) for k in ("pointing", "energy", "iou", "deletion_auc")}
        out[r.method]["random_deletion_auc"] = ci(r, "deletion_auc", "random")
        out["seconds"][r.method] = round(time.perf_counter() - t0, 1)
        baselines = r
    out["n_images"] = int(len(baselines.per_image))
    for base in ("lungs", "random", "centre"):
        out[base] = {k: ci(baselines, k, base) for k in ("pointing", "energy")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
