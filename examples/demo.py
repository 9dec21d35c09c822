"""The whole method: make demo
=============================

The whole method on the embedded synthetic default, offline: ``make demo``.

Usage:

    python examples/demo.py --out demo_output            # the default (about 4.5 minutes on 2 cores)
    python examples/demo.py --out /tmp/d --quick          # a smoke run with tiny sizes

Stages (each timed; the wall times are printed at the end):

1. synthetic source site "A" and target site "B" written as DICOM (``make_demo_sites``; site B is
   stored MONOCHROME1, CR, noisier, with half AP views), plus a small external site "C";
2. the three manifests loaded with ``load_manifest``;
3. embeddings cached in ``<out>/embeddings.h5``: the library's default embedding
   ([`DEFAULT_EMBEDDING`][cxr_embed.DEFAULT_EMBEDDING]: EfficientNet-Lite0 at 224/320/448 px fused
   with Lite1 at 224/320 px, chosen by the pipeline search) and efficientnet_lite0 at 224 px, the
   single CNN that is fine-tuned and explained (offline ImageNet weights); a second run finds them
   in the cache and embeds nothing;
4. classical classifiers on the target's default embeddings with patient-grouped 5-fold CV (AUC + 95 % CI);
5. stacking of two classifiers (out-of-fold, patient-grouped);
6. the paper's three-way comparison ([`compare_transfer`][cxr_embed.compare_transfer]: stacking of
   the source CNN's outputs / embeddings + classifiers with simple and entropy-weighted averaging /
   fine-tuning of the source CNN) on the same folds, with external validation on site C;
7. saliency overlays (the default ``method="auto"`` per model kind) of a few true positives, with the
   true lesion outlined and the pointing result in the caption: through the logistic regression on
   the default embeddings (the sum of its passes' class activation maps) and through the fine-tuned CNN;
8. the HTML report: a summary sentence per setting and a forest plot first, then the tables,
   ROC and calibration curves, the best approach's metrics and the overlays in a grid.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ["opacity", "effusion", "cardiomegaly"]


class Stages:
    """Wall time of each stage, printed as it finishes."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        print(f"\n== {name}", flush=True)
        t = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - t
        print(f"   [{self.times[name]:.1f} s]", flush=True)

    def table(self) -> pd.DataFrame:
        rows = [{"stage": k, "seconds": round(v, 1)} for k, v in self.times.items()]
        rows.append({"stage": "total", "seconds": round(time.perf_counter() - self.start, 1)})
        return pd.DataFrame(rows)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    p.add_argument("--n-source", type=int, default=200, help="source-site images (default 200)")
    p.add_argument("--n-target", type=int, default=120, help="target-site images (default 120, 2 per patient)")
    p.add_argument("--n-external", type=int, default=60, help="external-site images (default 60)")
    p.add_argument("--size", type=int, default=256, help="synthetic image size in pixels (default 256)")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="the single CNN: fine-tuned, the source of stacking, explained (default efficientnet_lite0)")
    p.add_argument("--embedding", default=None,
                   help="embedding of the classifier stages, beside --backbone in the comparison (default: the "
                        "library's default, cxr_embed.DEFAULT_EMBEDDING; 'none': --backbone's only)")
    p.add_argument("--weights", default="imagenet", help="'imagenet' (offline for efficientnet_lite*) or 'none'")
    p.add_argument("--input-size", type=int, default=None, help="CNN input size (default the backbone's)")
    p.add_argument("--folds", type=int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of each CI (default 1000)")
    p.add_argument("--n-explain", type=int, default=3, help="true positives to explain (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 48 px images, few images, 3 folds, 1 epoch, 50 resamples")
    p.add_argument("--seed", type=int, default=0)
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # tiny defaults; explicit flags still win
        p.set_defaults(n_source=24, n_target=36, n_external=16, size=48, folds=3, epochs=1, n_bootstrap=50,
                       n_explain=1)
    return p.parse_args(argv)


def _write_sites(args, data: Path) -> dict:
    from cxr_embed.datasets import SITES, make_demo_sites, make_synthetic_cxr, write_dataset

    def fresh(csv: Path, n: int) -> bool:
        return csv.is_file() and len(pd.read_csv(csv)) == n

    paths = {"source": data / "source" / "labels.csv", "target": data / "target" / "labels.csv",
             "external": data / "external" / "labels.csv"}
    if fresh(paths["source"], args.n_source) and fresh(paths["target"], args.n_target):
        print(f"   reusing {paths['source'].parent} and {paths['target'].parent}")
    else:
        made = make_demo_sites(data, n_source=args.n_source, n_target=args.n_target, seed=args.seed,
                               size=args.size, images_per_patient=2)
        paths.update(made)
    if fresh(paths["external"], args.n_external):
        print(f"   reusing {paths['external'].parent}")
    else:
        ds = make_synthetic_cxr(args.n_external, site="C", size=args.size, seed=args.seed + 1000, images_per_patient=2)
        paths["external"] = write_dataset(ds, data / "external", format="dicom", monochrome1=SITES["C"].monochrome1)
    return paths


def main(argv=None) -> int:
    args = _parse(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # an example script may quiet these
    # patient keys are salted hashes of PatientID; a real project sets its own secret salt (see
    # docs/reading.md). These phantoms hold no patient data, so a fixed, public demo salt is fine; set in
    # the environment so the decoding worker processes use it too (and do not warn, once each).
    os.environ.setdefault("CXR_EMBED_SALT", "cxr_embed demo: synthetic phantoms, no patient data")
    stage = Stages()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    import cxr_embed

    with stage("1. synthetic sites (DICOM)"):
        paths = _write_sites(args, out / "data")
        for key, csv in paths.items():
            print(f"   {key:8s} {csv}")

    with stage("2. manifests"):
        manifests = {key: cxr_embed.load_manifest(csv) for key, csv in paths.items()}
        for key, df in manifests.items():
            s = cxr_embed.summarize_manifest(df)
            print(f"   {key:8s} {s['n_images']} images, {s['n_patients']} patients, labels {df.attrs['labels']}")
        _, meta = cxr_embed.read_image(manifests["target"]["path"].iloc[0])
        print(f"   target DICOM photometric interpretation: {meta.get('photometric_interpretation')}, "
              "read air-dark after inversion")
        target, source, external = manifests["target"], manifests["source"], manifests["external"]
        groups = target["patient_id"].to_numpy()
        Y = target[LABELS]

    with stage("3. embeddings (cached)"):
        weights = None if args.weights.lower() == "none" else args.weights
        bb = cxr_embed.Backbone(args.backbone, weights=weights, input_size=args.input_size)
        label = cxr_embed.DEFAULT_EMBEDDING if args.embedding is None else args.embedding
        emb = None if label.lower() == "none" else cxr_embed.CompositeEmbedding(label, weights=weights)
        store = cxr_embed.EmbeddingStore(out / "embeddings.h5")
        for what in ([emb] if emb is not None else []) + [bb]:
            for key, df in manifests.items():
                rep = cxr_embed.extract(df, what, store, progress=False)
                print(f"   {key:8s} {rep.n_done} embedded ({rep.images_per_second:.1f} images/s), {rep.n_cached} "
                      f"from cache: {what.name}")
        main_emb = emb if emb is not None else bb
        _, X = store.load(main_emb, target["image_id"].astype(str))
        print(f"   {main_emb.name}: X {X.shape} in {store.path}")

    with stage("4. classifiers, patient-grouped CV"):
        rows = []
        for name in ("logreg", "knn", "random_forest"):
            params = {"n_estimators": 100} if name == "random_forest" else {}
            est = cxr_embed.MultiLabelClassifier(cxr_embed.make_classifier(name, random_state=args.seed, **params))
            cv = cxr_embed.cross_validate_grouped(est, X, Y, groups, n_splits=args.folds, random_state=args.seed,
                                                  n_bootstrap=args.n_bootstrap)
            row = {"classifier": name, "macro": cv.mean_auc}
            row.update({lab: f"{r.auc:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for lab, r in cv.summary.iterrows()})
            rows.append(row)
        clf_table = pd.DataFrame(rows)
        print(clf_table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    with stage("5. stacking (out-of-fold, grouped)"):
        stack = cxr_embed.StackedEnsemble(
            [("logreg", cxr_embed.make_classifier("logreg")), ("knn", cxr_embed.make_classifier("knn"))],
            meta="logreg", cv=3, random_state=args.seed)
        cv = cxr_embed.cross_validate_grouped(cxr_embed.MultiLabelClassifier(stack), X, Y, groups, n_splits=args.folds,
                                              random_state=args.seed, n_bootstrap=args.n_bootstrap)
        stack_table = cv.summary.reset_index()[["label", "auc", "ci_low", "ci_high"]]
        print(stack_table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    with stage("6. three-way comparison (stacking / embeddings / fine-tuning)"):
        result = cxr_embed.compare_transfer(
            target, LABELS, source=source, backbones=[bb] + ([emb] if emb is not None else []), store=store,
            classifiers=("logreg", ("random_forest", cxr_embed.make_classifier("random_forest", n_estimators=100,
                                                                                random_state=args.seed))),
            external=external, n_splits=args.folds, n_bootstrap=args.n_bootstrap, random_state=args.seed,
            finetune_options={"epochs": args.epochs, "trainable_layers": 6, "batch_size": 16, "patience": 2},
            refit=True, out=out)
        for k, v in result.timings.items():
            print(f"   {k}: {v:.1f} s")

    overlays = {}
    with stage("7. saliency (default explanation on true positives, lesion outlined)"):
        try:
            overlays = _saliency(result, bb, main_emb, target, paths["target"].parent, out / "saliency", args.n_explain)
        except Exception as e:  # noqa: BLE001 - the demo goes on without overlays, saying why
            print(f"   saliency skipped: {type(e).__name__}: {e}")

    with stage("8. report"):
        report = result.write_report(
            out / "report", title="cxr_embed demo: synthetic site A -> site B (external: site C)", images=overlays,
            tables={"Classifiers on embeddings, patient-grouped CV (target)": clf_table,
                    "Stacking of logreg + kNN (target)": stack_table},
            notes=["Synthetic phantoms: source site A (DX, MONOCHROME2), target site B (CR, MONOCHROME1, noisier, "
                   "half AP), external site C. Labels: " + ", ".join(LABELS) + "."],
            n_bootstrap=args.n_bootstrap, random_state=args.seed)

    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print("\n== Result: internal (out-of-fold on site B, same patient-grouped folds), macro AUC over "
          f"{len(LABELS)} labels")
    print(result.summary("internal").to_string(index=False, float_format=fmt))
    print("\n== External (refitted on all of site B, scored on site C)")
    print(result.summary("external").to_string(index=False, float_format=fmt))
    print("\n== Wall time per stage (s)")
    times = stage.table()
    print(times.to_string(index=False))
    times.to_csv(out / "timings.csv", index=False)
    print(f"\nReport: {report.resolve()}")
    return 0


def _saliency(result, bb, emb, target, site_dir: Path, out: Path, n: int) -> dict:
    """Default explanations of the logreg on the default embeddings and of the fine-tuned CNN for the most
    confident true positives (a composite embedding's logreg: the sum of its passes' class activation maps)."""
    import cxr_embed
    from cxr_embed.datasets import load_masks

    label = "opacity"
    j = LABELS.index(label)
    ids, masks = load_masks(site_dir)
    mask_of = dict(zip(ids, masks[label]))
    logreg = f"{emb.name} + logreg"
    cnn = next((k for k, f in result.families.items() if f == "fine-tuning"), None)
    score = result.oof[logreg][:, j]
    positives = np.flatnonzero(result.y_true[:, j] == 1)
    chosen = positives[np.argsort(-score[positives])][:n]
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i in chosen:
        row = target.iloc[i]
        contour = mask_of.get(str(row["image_id"]))
        for kind, model, kw in (("logreg", result.models[logreg], {"backbone": emb}),
                                ("finetuned", result.models[cnn] if cnn else None,
                                 {"labels": LABELS, "resize": bb.resize})):
            if model is None:
                continue
            s = cxr_embed.explain(row["path"], model, method="auto", label=label, **kw)  # the default per model kind
            caption = None
            if contour is not None:
                hit = cxr_embed.pointing_game(s, contour)
                caption = (f"peak {'inside' if hit else 'outside'} the lesion | energy in lesion "
                           f"{cxr_embed.energy_in_mask(s, contour):.2f} (area {contour.mean():.3f})")
            who = f"logreg on {emb.name} embeddings" if kind == "logreg" else "fine-tuned CNN"
            png = cxr_embed.save_overlay(s, out / f"{row['image_id']}_{kind}_{s.method}.png", contour=contour,
                                         title=f"{s.method} | {label} | p={s.score:.2f} | {who}", caption=caption)
            region = "; white outline: the true lesion" if contour is not None else ""
            images[f"{row['image_id']}: {label}, p = {s.score:.2f}. {s.method} of {who}{region}"
                   + (f"; {caption}" if caption else "")] = png
            print(f"   {png}")
    return images


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
