"""``cxr-embed fit``, ``evaluate`` and ``predict``: classifiers on cached embeddings.

All three read embeddings from an :class:`~cxr_embed.EmbeddingStore` (never the
CNN) for the images of a manifest, matched by ``image_id``. Images of the manifest
that are not in the store are left out with a note on stderr (``--strict`` makes
that an error).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._bundles import add_key_arguments, bundle_key, load_bundle

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fit``, ``evaluate`` and ``predict`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["fit", "--store", "s.h5", "--manifest", "m.csv", "--out", "b"])
    >>> args.classifier, args.policy, args.cv
    ('logreg', 'ignore', 5)
    """
    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", required=True, help="HDF5 embedding store (cxr-embed extract)")
        p.add_argument("--manifest", required=True, help="dataset table or folder (as for cxr-embed manifest)")
        p.add_argument("--manifest-format", default="auto", help="manifest format (default auto)")
        p.add_argument("--root", default=None, help="folder relative image paths are resolved against")
        p.add_argument("--backbone-fingerprint", default=None, metavar="FP",
                       help="store group to use (a unique prefix is enough); default: the only group "
                            "(fit) or the model's (evaluate, predict)")
        p.add_argument("--strict", action="store_true",
                       help="fail when manifest images are missing from the store instead of leaving them out")

    p = subparsers.add_parser(
        "fit", help="fit a classifier on cached embeddings, with patient-grouped CV",
        description="Fit one classifier per label on the embeddings of the manifest's images, report "
                    "patient-grouped cross-validated ROC AUCs with 95%% CIs, then refit on all images and "
                    "save a checksummed model bundle.")
    data_args(p)
    p.add_argument("--labels", default=None, help="comma-separated label columns (default: all of the manifest's)")
    p.add_argument("--classifier", default="logreg",
                   help="logreg (default), linear_svm, rbf_svm, knn, random_forest, extra_trees, "
                        "hist_gradient_boosting, mlp or xgboost")
    p.add_argument("--policy", default="ignore",
                   help="uncertain-label policy: ignore (default), zeros, ones, ones_smoothed, multiclass")
    p.add_argument("--cv", type=int, default=5, help="patient-grouped folds for the estimate (0: skip CV)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the grouped CV (default 1)")
    p.add_argument("--search", choices=("grid", "random"), default=None,
                   help="tune hyper-parameters by a patient-grouped search inside each fold (nested CV)")
    p.add_argument("--inner-cv", type=int, default=3,
                   help="patient-grouped folds of the --search inside each training set (default 3)")
    p.add_argument("--pca", type=float, default=None,
                   help="PCA before the classifier: components (>= 1) or variance fraction (< 1)")
    p.add_argument("--n-jobs", type=int, default=None, help="parallel jobs")
    p.add_argument("--clinical", default=None, metavar="COLS",
                   help="comma-separated manifest columns used beside the embeddings (e.g. age,sex,view): scaled, "
                        "imputed and one-hot encoded inside each training fold; evaluate/predict read them too")
    p.add_argument("--importance-permutations", type=int, default=5, metavar="N",
                   help="with --clinical and --cv: permutation importance of each clinical column and of the image "
                        "block on held-out patient-grouped folds (N shuffles per block and fold, default 5; 0 skips); "
                        "stored in the bundle and shown by cxr-embed evaluate's report")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle (only a folder that is recognisably a bundle is replaced)")
    add_key_arguments(p, loading=False)
    p.set_defaults(func=_cmd_fit)

    p = subparsers.add_parser(
        "evaluate", help="score a saved model on a manifest: metrics table and HTML report",
        description="Predict the manifest's images with a model bundle and write metrics.csv, metrics.json "
                    "and an HTML report (ROC AUC with patient-bootstrap CIs, operating points, calibration, "
                    "subgroups). Uncertain (-1) and missing labels are left out of each label's metrics.")
    data_args(p)
    p.add_argument("--model", required=True, help="bundle directory (cxr-embed fit)")
    p.add_argument("--saliency", default=None, metavar="DIR",
                   help="folder written by cxr-embed explain: its overlays are shown in the report (the first 24), "
                        "after the importance of the clinical columns when the model used some")
    p.add_argument("--subgroups", default="auto",
                   help="comma-separated manifest columns for subgroup AUCs; 'auto' = sex, view, site, age "
                        "bands where present; 'none' to skip")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="report directory")
    add_key_arguments(p, loading=True)
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser(
        "predict", help="write per-image probabilities of a saved model to CSV",
        description="Predict the manifest's images with a model bundle; the CSV has image_id, patient_id "
                    "and one probability column per label.")
    data_args(p)
    p.add_argument("--model", required=True, help="bundle directory (cxr-embed fit)")
    p.add_argument("--out", required=True, help="CSV file to write")
    add_key_arguments(p, loading=True)
    p.set_defaults(func=_cmd_predict)


# --------------------------------------------------------------------------- helpers
def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _resolve_fingerprint(store: Any, wanted: str | None) -> str:
    import cxr_embed

    groups = store.info()["backbones"]
    listing = "; ".join(f"{fp} ({g.get('config', {}).get('name', '?')}, {g['count']} images, dim {g['dim']})"
                        for fp, g in groups.items()) or "none"
    if wanted is not None:
        matches = [fp for fp in groups if fp.startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        what = "matches no" if not matches else "is ambiguous among the"
        raise cxr_embed.StoreError(f"{store.path}: --backbone-fingerprint {wanted!r} {what} stored fingerprints: "
                                   f"{listing}")
    if len(groups) == 1:
        return next(iter(groups))
    if not groups:
        raise cxr_embed.StoreError(f"{store.path}: the store holds no embeddings; run cxr-embed extract first")
    raise cxr_embed.StoreError(f"{store.path}: the store holds several backbones; choose one with "
                               f"--backbone-fingerprint: {listing}")


def _load_data(args: argparse.Namespace, fingerprint: str | None):
    """(manifest rows with embeddings, X, fingerprint)."""
    import numpy as np

    import cxr_embed

    manifest = cxr_embed.load_manifest(args.manifest, format=args.manifest_format, root=args.root,
                                       check_files=False)
    store = cxr_embed.EmbeddingStore(args.store, mode="r")
    fp = _resolve_fingerprint(store, fingerprint if fingerprint is not None else args.backbone_fingerprint)
    if fingerprint is not None and args.backbone_fingerprint is not None and not fp.startswith(args.backbone_fingerprint):
        raise cxr_embed.FingerprintMismatchError(
            f"--backbone-fingerprint {args.backbone_fingerprint!r} differs from the model's {fingerprint!r}")
    stored = set(store.ids(fp).tolist())
    ids = manifest["image_id"].astype(str)
    have = ids.isin(stored).to_numpy()
    if not have.all():
        missing = ids[~have].tolist()
        if args.strict:
            raise cxr_embed.MissingIdsError(
                f"{args.store}: {len(missing)} of {len(ids)} manifest images have no embeddings for {fp}, first ten: "
                f"{missing[:10]}; fix: run cxr-embed extract, or drop --strict to leave them out")
        print(f"note: {len(missing)} of {len(ids)} manifest images are not in the store and are left out "
              f"(first: {missing[:3]})", file=sys.stderr)
    if not have.any():
        raise cxr_embed.MissingIdsError(f"{args.store}: none of the manifest's {len(ids)} images has embeddings for "
                                        f"fingerprint {fp}; fix: extract them with the same backbone")
    rows = manifest.loc[have].reset_index(drop=True)
    rows.attrs = dict(manifest.attrs)
    _, X = store.load(fp, rows["image_id"].astype(str).tolist())
    return rows, np.asarray(X), fp


def _label_columns(manifest: Any, wanted: list[str] | None) -> list[str]:
    import cxr_embed

    labels = list(manifest.attrs.get("labels", [])) if wanted is None else wanted
    missing = [c for c in labels if c not in manifest.columns]
    if missing or not labels:
        raise cxr_embed.ManifestError(
            f"label column(s) {missing or '(none)'} not in the manifest; its labels are "
            f"{manifest.attrs.get('labels', [])}; fix: pass --labels with some of them")
    return labels


def _with_clinical(manifest: Any, X: Any, columns: list[str] | None) -> Any:
    """The embeddings alone, or beside the manifest's clinical columns (cxr_embed.learn.clinical)."""
    if not columns:
        return X
    import cxr_embed
    from cxr_embed.learn.clinical import clinical_frame

    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise cxr_embed.ClinicalDataError(f"clinical column(s) {missing} are not in the manifest (it has "
                                          f"{list(manifest.columns)}); fix: add them or change --clinical")
    return clinical_frame(X, manifest[list(columns)])


def _print_table(df: Any) -> None:
    print(df.to_string(float_format=lambda v: f"{v:.3f}"))


# --------------------------------------------------------------------------- commands
def _cmd_fit(args: argparse.Namespace) -> int:
    import cxr_embed
    from cxr_embed.learn.classifiers import MultiLabelClassifier, make_classifier
    from cxr_embed.learn.labels import normalize_policy

    wanted = None if args.labels is None else [s.strip() for s in args.labels.split(",") if s.strip()]
    key = bundle_key(args)  # a bad key file fails before the fit, not after it
    try:
        policy = normalize_policy(args.policy)
        pca = None if args.pca is None else (int(args.pca) if float(args.pca).is_integer() else float(args.pca))
        clinical = [s.strip() for s in (args.clinical or "").split(",") if s.strip()] or None
        base = make_classifier(args.classifier, search=args.search, n_jobs=args.n_jobs, random_state=args.seed,
                               pca=pca, cv=args.inner_cv, clinical=clinical)
    except ValueError as e:
        return _error(str(e))
    manifest, X, fp = _load_data(args, None)
    labels = _label_columns(manifest, wanted)
    X = _with_clinical(manifest, X, clinical)
    Y = manifest[labels].astype(float)
    groups = manifest["patient_id"].astype(str).to_numpy()
    estimator = MultiLabelClassifier(base, policy=policy, random_state=args.seed)
    print(f"{len(manifest)} images, {len(set(groups))} patients, dim {X.shape[1]}, fingerprint {fp}; "
          f"{args.classifier} with policy {policy}")
    try:
        summary = _cross_validate_and_fit(args, estimator, X, Y, groups)
        importance = _importance(args, base, X, Y, groups) if clinical else {}
    except ValueError as e:  # e.g. fewer patients than folds; CxrEmbedError subclasses go to main()
        if isinstance(e, cxr_embed.CxrEmbedError):
            raise
        return _error(str(e))
    extra = {"classifier": args.classifier, "policy": policy, "search": args.search, "cv": args.cv,
             "repeats": args.repeats, "seed": args.seed, "pca": pca, "clinical": clinical, "store": str(args.store),
             "manifest": str(args.manifest), "n_images": int(len(manifest)), "n_patients": int(len(set(groups))),
             # so `cxr-embed explain` can rebuild the backbone without the store
             "backbone_config": cxr_embed.EmbeddingStore(args.store, mode="r").info()["backbones"][fp].get("config")}
    if importance:  # label -> clinical_importance table, for cxr-embed evaluate's report
        extra["importance"] = {lab: {"table": t.to_dict("records"),
                                     "attrs": {k: v for k, v in t.attrs.items() if k != "per_fold"}}
                               for lab, t in importance.items()}
    path = cxr_embed.save_model(args.out, estimator, labels=labels, backbone_fingerprint=fp, manifest=manifest,
                                metrics=summary, extra=extra, overwrite=args.overwrite, key=key)
    print(f"model bundle written to {path}")
    return 0


def _cross_validate_and_fit(args: argparse.Namespace, estimator: Any, X: Any, Y: Any, groups: Any) -> Any:
    """Grouped CV (printed) then the final fit on all images; returns the CV summary or None."""
    import cxr_embed

    summary = None
    if args.cv:
        cv = cxr_embed.cross_validate_grouped(estimator, X, Y, groups, n_splits=args.cv, n_repeats=args.repeats,
                                              random_state=args.seed, n_jobs=args.n_jobs,
                                              n_bootstrap=args.n_bootstrap)
        summary = cv.summary.reset_index()
        kind = "nested " if args.search else ""
        print(f"patient-grouped {kind}CV ({args.repeats} x {args.cv} folds), ROC AUC with 95% CI:")
        _print_table(cv.summary[["auc", "ci_low", "ci_high", "fold_auc_std", "n", "n_pos", "n_patients"]])
        print(f"macro AUC {cv.mean_auc:.3f}")
    estimator.fit(X, Y, groups=groups)
    return summary


def _importance(args: argparse.Namespace, base: Any, X: Any, Y: Any, groups: Any) -> dict:
    """Per label: :func:`cxr_embed.clinical_importance` of the clinical columns and the image block.

    Computed on the rows where the label is certain (1/0), over ``--cv`` patient-grouped folds;
    a label that cannot be scored (one class, fewer patients than folds) is skipped with a note.
    """
    import numpy as np

    from cxr_embed.learn.clinical import clinical_importance

    if not args.cv or args.cv < 2 or args.importance_permutations <= 0:
        return {}
    out = {}
    for lab in Y.columns:
        y = Y[lab].to_numpy(dtype=float)
        known = np.isin(y, (0.0, 1.0))
        try:
            t = clinical_importance(base, X.iloc[np.flatnonzero(known)], y[known].astype(int), groups[known],
                                    n_splits=args.cv, n_permutations=args.importance_permutations,
                                    random_state=args.seed, n_jobs=args.n_jobs)
        except ValueError as e:
            import cxr_embed

            if isinstance(e, cxr_embed.CxrEmbedError):
                raise
            print(f"note: importance of label {lab!r} not computed: {e}", file=sys.stderr)
            continue
        print(f"importance for {lab} (ROC AUC lost when shuffled, held-out folds, "
              f"{t.attrs['ci']:.0%} CI; {args.cv} folds x {args.importance_permutations} shuffles):")
        _print_table(t.set_index("feature")[["kind", "importance", "ci_low", "ci_high", "baseline_auc"]])
        out[str(lab)] = t
    return out


def _stored_importance(bundle: Any) -> dict:
    """The importance tables ``cxr-embed fit --clinical`` stored in the bundle, as DataFrames."""
    import pandas as pd

    out = {}
    for lab, item in ((bundle.extra or {}).get("importance") or {}).items():
        t = pd.DataFrame(item.get("table") or [])
        t.attrs.update(item.get("attrs") or {})
        if len(t):
            out[str(lab)] = t
    return out


def _saliency_images(folder: str) -> dict:
    """Caption -> overlay PNG of a ``cxr-embed explain`` output folder (its explanations.csv), first 24."""
    import math
    from pathlib import Path

    import pandas as pd

    import cxr_embed

    table_path = Path(folder) / "explanations.csv"
    if not table_path.is_file():
        raise cxr_embed.InvalidInputError(f"{folder}: no explanations.csv; fix: pass the --out folder of cxr-embed "
                                          "explain to --saliency")
    table = pd.read_csv(table_path)
    images = {}
    for row in table.dropna(subset=["overlay"]).head(24).itertuples():
        png = Path(str(row.overlay))
        if not png.is_file():  # the folder was moved: the overlays sit beside explanations.csv
            png = Path(folder) / png.name
        score = getattr(row, "score", math.nan)
        caption = f"{row.image_id}" + (f" (score {float(score):.2f})" if pd.notna(score) else "")
        images[caption] = png
    return images


def _subgroups(manifest: Any, spec: str) -> dict:
    from cxr_embed.evaluate.metrics import age_bands

    if spec.strip().lower() == "none":
        return {}
    if spec.strip().lower() == "auto":
        cols = [c for c in ("sex", "view", "site", "age") if c in manifest.columns and manifest[c].notna().any()]
    else:
        cols = [c.strip() for c in spec.split(",") if c.strip()]
        missing = [c for c in cols if c not in manifest.columns]
        if missing:
            import cxr_embed

            raise cxr_embed.ManifestError(f"subgroup column(s) {missing} not in the manifest; fix: --subgroups with "
                                          f"some of {list(manifest.columns)}")
    out = {}
    for c in cols:
        values = manifest[c]
        out[c] = age_bands(values.to_numpy(dtype=float)) if c == "age" else values.astype(object).to_numpy()
    return out


def _predictions(args: argparse.Namespace):
    bundle = load_bundle(args, args.model)
    manifest, X, fp = _load_data(args, bundle.backbone_fingerprint)
    X = _with_clinical(manifest, X, bundle.extra.get("clinical"))
    proba = bundle.predict_proba(X, fingerprint=fp)
    return bundle, manifest, proba


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    import cxr_embed

    bundle, manifest, proba = _predictions(args)
    labels = _label_columns(manifest, bundle.labels)
    truth = manifest[labels].to_numpy(dtype=float)
    truth = np.where(np.isin(truth, (0.0, 1.0)), truth, np.nan)  # uncertain/missing: not scored
    groups = manifest["patient_id"].astype(str).to_numpy()
    metrics = cxr_embed.evaluate_predictions(truth, proba, labels=labels, groups=groups,
                                             subgroups=_subgroups(manifest, args.subgroups) or None,
                                             n_bootstrap=args.n_bootstrap, random_state=args.seed)
    from pathlib import Path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(out / "metrics.csv", index=False)
    importance = _stored_importance(bundle)
    images = _saliency_images(args.saliency) if args.saliency else None
    note = None
    if importance:
        note = (f"Measured by cxr-embed fit on its training manifest ({bundle.extra.get('manifest', '?')}): "
                f"permutation importance on held-out patient-grouped folds "
                f"({next(iter(importance.values())).attrs.get('n_folds', '?')} folds, "
                f"{next(iter(importance.values())).attrs.get('n_permutations', '?')} shuffles per block and fold), "
                "the ROC AUC lost when a block is shuffled; the image is one block. CIs: t over folds, "
                "Nadeau & Bengio corrected.")
    notes = [f"model {args.model} ({bundle.extra.get('classifier', '?')}, policy {bundle.extra.get('policy', '?')}), "
             f"trained {bundle.created} on manifest hash {bundle.manifest_hash}",
             f"evaluated on {args.manifest}: {len(manifest)} images, {len(set(groups))} patients; "
             f"embeddings {bundle.backbone_fingerprint[:12]} from {args.store}",
             "Uncertain (-1) and missing labels are left out of each label's metrics; CIs resample patients."]
    index = cxr_embed.write_report(out, title=f"cxr-embed evaluation: {Path(args.model).name}", metrics=metrics,
                                   y_true=truth, y_score=proba, labels=labels, notes=notes,
                                   importance=(importance if len(importance) > 1 else next(iter(importance.values())))
                                   if importance else None, importance_note=note, images=images)
    auc = metrics[(metrics["metric"] == "auc") & (metrics["subgroup"] == "all")]
    _print_table(auc[["label", "value", "ci_low", "ci_high", "n", "n_pos"]].set_index("label"))
    print(f"report written to {index}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    bundle, manifest, proba = _predictions(args)
    out = pd.DataFrame({"image_id": manifest["image_id"].astype(str), "patient_id": manifest["patient_id"].astype(str)})
    for j, name in enumerate(bundle.labels):
        out[name] = proba[:, j]
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"{len(out)} predictions of {len(bundle.labels)} label(s) written to {args.out}")
    return 0
