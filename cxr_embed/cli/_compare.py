"""``cxr-embed compare``: the three-way transfer comparison (stacking / embeddings / fine-tuning)."""
from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [s.strip() for s in text.split(",") if s.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["compare", "--target", "t.csv", "--labels", "a,b", "--out", "o"])
    >>> args.cv, args.backbones, args.classifiers
    (5, 'efficientnet_lite0', 'logreg,random_forest')
    """
    p = subparsers.add_parser(
        "compare", help="compare stacking, embeddings and fine-tuning on the same patient-grouped folds",
        description="Run the three transfer approaches of Gozzi et al. (2022) on the same patient-grouped "
                    "folds of the target manifest (and score them on an external manifest, never used for "
                    "fitting), then write comparison.csv and an HTML report with AUCs, 95%% CIs, DeLong "
                    "p-values against the best approach and wall times.")
    p.add_argument("--target", required=True, help="target (local) manifest: CSV or folder")
    p.add_argument("--labels", default=None, help="comma-separated target label columns (default: all)")
    p.add_argument("--source", default=None,
                   help="source manifest: a source CNN (the first backbone, ImageNet init) is fine-tuned on it")
    p.add_argument("--source-labels", default=None, help="comma-separated source labels (default: all)")
    p.add_argument("--source-model", action="append", default=None, metavar="MODEL.keras",
                   help="source CNN with a sigmoid head (from cxr-embed/finetune); repeat for several")
    p.add_argument("--external", default=None, help="external test manifest (same label columns)")
    p.add_argument("--backbones", default="efficientnet_lite0", help="comma-separated embedding backbones")
    p.add_argument("--classifiers", default="logreg,random_forest", help="comma-separated classifiers")
    p.add_argument("--clinical", default=None, metavar="COLS",
                   help="comma-separated manifest columns used beside the embeddings (e.g. age,sex,view): scaled, "
                        "imputed and one-hot encoded inside each training fold; stacking and fine-tuning use the "
                        "images alone (the table's clinical column says so)")
    p.add_argument("--approaches", default="stacking,embeddings,fine-tuning",
                   help="comma-separated subset of stacking, embeddings, fine-tuning")
    p.add_argument("--store", default=None, help="embedding store (default OUT/embeddings.h5)")
    p.add_argument("--cv", type=int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument("--policy", default="ignore", help="uncertain-label policy for training (default ignore)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 5)")
    p.add_argument("--trainable-layers", default=None,
                   help="layers with weights unfrozen when fine-tuning: an int (default 6) or 'all'")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder: comparison.csv, report/index.html")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    import cxr_embed

    options = {}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    if args.trainable_layers is not None:
        tl = args.trainable_layers
        options["trainable_layers"] = tl if tl == "all" else int(tl)
    result = cxr_embed.compare_transfer(
        args.target,
        _csv_list(args.labels),
        source=args.source,
        source_models=args.source_model,
        source_labels=_csv_list(args.source_labels),
        external=args.external,
        backbones=_csv_list(args.backbones),
        classifiers=_csv_list(args.classifiers),
        clinical=_csv_list(args.clinical),
        approaches=_csv_list(args.approaches),
        store=args.store,
        n_splits=args.cv,
        policy=args.policy,
        finetune_options=options,
        n_bootstrap=args.n_bootstrap,
        random_state=args.seed,
        out=args.out,
    )
    report = result.write_report(f"{args.out}/report", n_bootstrap=args.n_bootstrap, random_state=args.seed)
    for setting in ("internal", "external"):
        if (result.table["setting"] == setting).any():
            print(f"{setting}:")
            print(result.summary(setting).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps({"comparison": f"{args.out}/comparison.csv", "report": str(report),
                      "best": result.best("internal")}))
    return 0
