"""``cxr-embed search``: choose the pipeline by nested patient-grouped CV under stress (docs/search.md).

Runs :func:`cxr_embed.search_pipeline` and writes the ranked table (``search.csv``), the settings,
wall times and the chosen pipeline (``search.json``) and the chosen pipeline refitted on all
internal images as a model bundle (``best_model/``: ``cxr-embed predict`` reads it on a store written
by ``cxr-embed extract --backbone`` with the chosen backbone, or with its embedding label for a
multi-size or fused pipeline).
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def _list(text: str | None) -> list[str]:
    from cxr_embed.cli._compare import _csv_list

    return _csv_list(text) or []


def _opt(t: str):
    return None if t.lower() in ("none", "default", "native") else t


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``search`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["search", "--manifest", "m.csv", "--label", "pneumonia", "--store", "s.h5",
    ...                           "--out", "o"])
    >>> args.classifiers, args.tta, args.rank
    ('logreg,linear_svm,xgboost,mlp', 'none,flip', 'worst')
    """
    p = subparsers.add_parser(
        "search", help="choose backbone, input size, TTA and classifier by nested patient-grouped CV under stress",
        description="Every embedding configuration is extracted once into --store (cached, resumable); each "
                    "classifier is tuned in an inner patient-grouped search inside every outer fold; pipelines are "
                    "ranked by the AUC they keep under their worst acquisition shift (perturbed copies of the "
                    "held-out images). --external is scored by the refitted pipelines and never used to choose. "
                    "See docs/search.md.")
    p.add_argument("--manifest", required=True, help="internal dataset table or folder")
    p.add_argument("--manifest-format", default="auto", help="manifest format (default auto)")
    p.add_argument("--root", default=None, help="folder relative image paths are resolved against")
    p.add_argument("--label", required=True, help="binary label column")
    p.add_argument("--store", required=True, help="HDF5 store for the internal embeddings (created if missing)")
    p.add_argument("--out", required=True, help="output folder (search.csv, search.json, best_model/)")
    p.add_argument("--backbones", default="efficientnet_lite0", help="comma-separated backbone names")
    p.add_argument("--input-sizes", default="native", help="comma-separated input sizes ('native': each backbone's own)")
    p.add_argument("--layers", default="none", help="comma-separated layers ('none': the last one)")
    p.add_argument("--tta", default="none,flip", help="test-time augmentation options: none, flip (default both)")
    p.add_argument("--multiscale", action="store_true", help="also compare the mean over all input sizes")
    p.add_argument("--fuse", action="append", default=None, metavar="GROUP",
                   help="also compare a concatenation of embeddings: 'backbones' (every combination of the "
                        "backbones, each by its multi-resolution embedding) or labels joined by ' + ', e.g. "
                        "'efficientnet_lite0@224 + efficientnet_lite2@260' (repeatable)")
    p.add_argument("--classifiers", default="logreg,linear_svm,xgboost,mlp", help="comma-separated classifier names")
    p.add_argument("--cv", type=int, default=5, help="outer patient-grouped folds (default 5)")
    p.add_argument("--inner-cv", type=int, default=3, help="inner patient-grouped folds of the search (default 3)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the outer split (default 1)")
    p.add_argument("--groups", default="patient_id", help="patient column (default patient_id)")
    p.add_argument("--stress", default="lowres,jpeg,gamma,noise,squash",
                   help="comma-separated perturbations of the held-out copies, or 'none'")
    p.add_argument("--stress-top", type=int, default=None,
                   help="stress-test only the embedding configurations of the K best pipelines by clean AUC")
    p.add_argument("--train-augment", default="none",
                   help="training-time shift augmentation options, comma-separated; each 'none' or perturbations "
                        "joined by '+', e.g. 'none,lowres+jpeg' (default none)")
    p.add_argument("--rank", default="worst", choices=("worst", "clean"), help="ranking rule (default worst)")
    p.add_argument("--external", default=None, help="external dataset (reported only, never used to choose)")
    p.add_argument("--external-store", default=None, help="its store (default <store>.external.h5)")
    p.add_argument("--weights", default="imagenet", help="backbone weights: imagenet, none, or a weights file")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None, help="decoding workers (default: cores - 1)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples (default 1000)")
    p.add_argument("--n-jobs", type=int, default=None, help="parallel jobs of the inner searches")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cxr_embed
    from cxr_embed.transfer.search_grid import parse_fuse

    manifest = cxr_embed.load_manifest(args.manifest, format=args.manifest_format, root=args.root)
    external = None if args.external is None else cxr_embed.load_manifest(args.external)
    sizes = [None if _opt(s) is None else int(s) for s in _list(args.input_sizes)] or None
    stress = [] if args.stress.strip().lower() == "none" else _list(args.stress)
    weights = None if args.weights.lower() == "none" else args.weights
    train_augment = [None if _opt(o) is None else o.split("+") for o in _list(args.train_augment)] or [None]
    try:
        res = cxr_embed.search_pipeline(
            manifest, args.label, store=args.store, backbones=_list(args.backbones), input_sizes=sizes,
            layers=[_opt(t) for t in _list(args.layers)] or [None], tta=[_opt(t) for t in _list(args.tta)] or [None],
            multiscale=args.multiscale, fuse=parse_fuse(args.fuse), classifiers=_list(args.classifiers), cv=args.cv, inner_cv=args.inner_cv,
            n_repeats=args.repeats, groups=args.groups, stress=stress, stress_top=args.stress_top,
            train_augment=train_augment, rank=args.rank,
            external=external, external_store=args.external_store, backbone_kwargs={"weights": weights},
            extract_kwargs={"batch_size": args.batch_size, "workers": args.workers}, n_bootstrap=args.n_bootstrap,
            n_jobs=args.n_jobs, random_state=args.seed)
    except ValueError as e:  # bad settings; CxrEmbedError subclasses go to main()
        if isinstance(e, cxr_embed.CxrEmbedError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = res.table.copy()
    table["params"] = [json.dumps(p) for p in table["params"]]
    table.to_csv(out / "search.csv", index=False)
    best = res.best
    bundle = best.save(out / "best_model", manifest=manifest, overwrite=True,
                       metrics=res.table.drop(columns=["params"]).head(1))
    (out / "search.json").write_text(json.dumps({
        "best": {"pipeline": str(res.table.loc[0, "pipeline"]), "embedding": best.embedding.to_dict(),
                 "classifier": best.classifier, "best_params": best.best_params, "fingerprint": best.fingerprint,
                 "train_augment": [dict(c) for c in best.train_augment],
                 "bundle": str(bundle)},
        "settings": res.settings, "seconds": res.seconds,
    }, indent=1, default=str))
    print(f"{res.settings['n_images']} images, {len(res.table)} pipelines; best: {res.table.loc[0, 'pipeline']}")
    print(res.summary())
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()))
    print(f"table: {out / 'search.csv'}; chosen pipeline refitted on all images: {bundle}")
    return 0
