"""The three-way comparison on real radiographs
============================================

The three-way transfer comparison on real radiographs: NIH (local) -> Kermany (external).

Usage:

    python examples/real_data_comparison.py [--data /work/shared/data] [--out real_data_output]

Local (target) data: ``nih_cxr14_pneumonia`` (717 NIH ChestX-ray14 images of 478 adults, label
``pneumonia``), 5 patient-grouped folds shared by every approach. External test set:
``kermany_pediatric`` (1,525 paediatric images from Guangzhou), never used for fitting.

What "source CNN" means here: there is no CheXpert on this machine. The source CNN is
efficientnet_lite0 (ImageNet weights, all layers trained, at 128 px to fit a 2-core CPU budget)
fine-tuned, with a new multi-label sigmoid head, on
``nih_cxr14_tiny64``: 64x64 NIH thumbnails of *other* patients (the few patients shared with
``nih_cxr14_pneumonia`` are dropped) labelled with the NIH findings that have enough positives
there. So the source task is "NIH findings on low-resolution adult films": same hospital as the
target, different patients, different resolution and a different label set, far smaller than
CheXpert's 224,316 films. Approach 1 stacks that CNN's predicted finding probabilities;
approach 3 fine-tunes it (last layers) on each NIH training fold; approach 2 uses plain ImageNet
Lite0 embeddings. Skips with a message when the data is absent.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path



def default_data_root() -> Path:
    env = os.environ.get("CXR_EMBED_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_root(), help="folder holding the shared datasets")
    p.add_argument("--out", type=Path, default=Path("real_data_output"), help="output folder")
    p.add_argument("--label", default="pneumonia")
    p.add_argument("--classifiers", default="logreg,random_forest")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="epochs of every CNN training (default 2)")
    p.add_argument("--cnn-size", type=int, default=128,
                   help="input size of the source CNN and of its fine-tuning (default 128; embeddings use 224)")
    p.add_argument("--min-positives", type=int, default=40, help="source labels need this many positives")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    target_dir, ext_dir, src_dir = (args.data / n for n in ("nih_cxr14_pneumonia", "kermany_pediatric",
                                                            "nih_cxr14_tiny64"))
    if not all((d / "labels.csv").is_file() for d in (target_dir, ext_dir, src_dir)):
        print(f"skipping: real data absent (need {target_dir}, {ext_dir} and {src_dir})")
        return 0

    import cxr_embed
    from cxr_embed.transfer.finetuning import finetune

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    target = cxr_embed.load_manifest(target_dir)
    external = cxr_embed.load_manifest(ext_dir)
    source = cxr_embed.load_manifest(src_dir)
    target = target[target[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    external = external[external[args.label].isin([0.0, 1.0])].reset_index(drop=True)
    shared = set(source["patient_id"]) & set(target["patient_id"])
    source = source[~source["patient_id"].isin(shared)].reset_index(drop=True)
    positives = {lab: int((source[lab] == 1).sum()) for lab in source.attrs["labels"]}
    source_labels = [lab for lab, n in positives.items() if n >= args.min_positives]
    print(f"target   {len(target)} images, {target['patient_id'].nunique()} patients")
    print(f"external {len(external)} images, {external['patient_id'].nunique()} patients")
    print(f"source   {len(source)} images, {source['patient_id'].nunique()} patients "
          f"({len(shared)} patients shared with the target dropped); labels {source_labels}")

    options = {"epochs": args.epochs, "trainable_layers": 6, "batch_size": 32, "patience": 2}
    t = time.perf_counter()
    src = finetune(cxr_embed.Backbone("efficientnet_lite0", input_size=args.cnn_size), source, source_labels,
                   trainable_layers="all", epochs=args.epochs, batch_size=32, learning_rate=1e-3, random_state=0,
                   out=args.out / "source_lite0_nih64.keras")
    print(f"source CNN: validation mean AUC {src.val_auc:.3f} over {source_labels} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    result = cxr_embed.compare_transfer(
        target, [args.label], source_models=[src.path], backbones=("efficientnet_lite0",),
        store=args.out / "embeddings.h5", classifiers=tuple(args.classifiers.split(",")), external=external,
        n_splits=args.folds, n_bootstrap=args.n_bootstrap, random_state=0,
        finetune_options=options,
        out=args.out / "comparison")
    note = ("Source CNN: efficientnet_lite0 (ImageNet) fully fine-tuned at {0} px on nih_cxr14_tiny64 (64x64 NIH "
            "thumbnails of other patients) for the NIH findings {1}; no CheXpert here. Approach 3 fine-tunes its last "
            "6 layers at {0} px; approach 2 uses ImageNet Lite0 embeddings at 224 px.").format(args.cnn_size, source_labels)
    report = result.write_report(args.out / "comparison" / "report", title="NIH pneumonia -> Kermany: three-way "
                                 "transfer comparison", notes=[note], n_bootstrap=args.n_bootstrap)
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print(f"\ninternal: NIH, out-of-fold over {args.folds} patient-grouped folds (same folds for all)")
    print(result.summary("internal").to_string(index=False, float_format=fmt))
    print("\nexternal: Kermany, models refitted on all NIH images")
    print(result.summary("external").to_string(index=False, float_format=fmt))
    print("\nwall time per stage (s):")
    for k, v in result.timings.items():
        print(f"  {k}: {v:.1f}")
    print(f"total {time.perf_counter() - t0:.0f} s; report: {report.resolve()}")
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
