"""``cxr-embed audit``: what cached embeddings encode besides the finding (docs/audit.md).

Reads the embeddings of a manifest's images from an :class:`~cxr_embed.EmbeddingStore`
(matched by ``image_id``, like ``fit``), runs :func:`cxr_embed.audit_embeddings` and writes the
tables (CSV and ``audit.json``), the 2-D maps (PNG) and one HTML page in the report style.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``audit`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["audit", "--store", "s.h5", "--manifest", "m.csv", "--out", "a"])
    >>> args.cv, args.map, args.label
    (5, 'pca', None)
    """
    p = subparsers.add_parser(
        "audit", help="audit cached embeddings: encoded attributes, shortcuts, subgroups, re-identification",
        description="How well the embeddings predict sex, age, view, site ... (patient-grouped CV, bootstrap CIs); "
                    "with --label, which attributes the label can ride on (shortcut flags), the classifier's AUC "
                    "per subgroup, and how often an image's nearest neighbour is its own patient. Writes CSV/JSON "
                    "tables, 2-D maps and index.html to --out. See docs/audit.md.")
    p.add_argument("--store", required=True, help="HDF5 embedding store (cxr-embed extract)")
    p.add_argument("--manifest", required=True, help="dataset table or folder (as for cxr-embed manifest)")
    p.add_argument("--manifest-format", default="auto", help="manifest format (default auto)")
    p.add_argument("--root", default=None, help="folder relative image paths are resolved against")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--backbone", default=None, metavar="NAME",
                       help="store group whose backbone has this name (e.g. efficientnet_lite0)")
    which.add_argument("--backbone-fingerprint", "--fingerprint", dest="backbone_fingerprint", default=None,
                       metavar="FP", help="store group to use (a unique prefix is enough); default: the only group")
    p.add_argument("--strict", action="store_true",
                   help="fail when manifest images are missing from the store instead of leaving them out")
    p.add_argument("--label", default=None, help="label column for shortcut and subgroup analysis (default: none)")
    p.add_argument("--attributes", default="auto",
                   help="comma-separated metadata columns, or 'auto' (sex, age, view, site, manufacturer, "
                        "modality, frontal_lateral, source where present)")
    p.add_argument("--classifier", default=None,
                   help="classifier of the label (a cxr-embed fit name such as logreg); default: the ridge probe")
    p.add_argument("--cv", type=int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples for CIs (default 1000)")
    p.add_argument("--map", default="pca", choices=("pca", "tsne", "umap", "auto", "none"),
                   help="2-D map method (default pca; umap needs pip install 'cxr_embed[audit]')")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_audit)


def _fingerprint_of_backbone(store_path: str, name: str) -> str:
    import cxr_embed

    groups = cxr_embed.EmbeddingStore(store_path, mode="r").info()["backbones"]
    matches = [fp for fp, g in groups.items() if (g.get("config") or {}).get("name") == name]
    if len(matches) == 1:
        return matches[0]
    names = sorted({str((g.get("config") or {}).get("name")) for g in groups.values()})
    what = "no group" if not matches else f"{len(matches)} groups"
    raise cxr_embed.StoreError(f"{store_path}: {what} of backbone {name!r} (stored: {names}); fix: pass "
                               "--backbone-fingerprint with one of the fingerprints of cxr-embed store info")


def _cmd_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cxr_embed
    from cxr_embed.cli._models import _load_data

    if args.backbone is not None:
        args.backbone_fingerprint = _fingerprint_of_backbone(args.store, args.backbone)
    manifest, X, fp = _load_data(args, None)
    attributes: Any = "auto" if args.attributes.strip() == "auto" else \
        [c.strip() for c in args.attributes.split(",") if c.strip()]
    estimator = None
    if args.classifier is not None:
        estimator = cxr_embed.make_classifier(args.classifier, random_state=args.seed)
    try:
        audit = cxr_embed.audit_embeddings(X, manifest, label=args.label, attributes=attributes, cv=args.cv,
                                           random_state=args.seed, estimator=estimator,
                                           n_bootstrap=args.n_bootstrap, map=None if args.map == "none" else args.map)
    except ValueError as e:  # bad settings (e.g. --cv 1); CxrEmbedError subclasses go to main()
        if isinstance(e, cxr_embed.CxrEmbedError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    audit.params.update({"store": str(args.store), "manifest": str(args.manifest), "fingerprint": fp})
    index = audit.write(Path(args.out), title=f"cxr-embed audit: {Path(args.manifest).name} ({fp[:12]})")
    print(f"{len(manifest)} images, {audit.params['n_patients']} patients, dim {X.shape[1]}, fingerprint {fp[:16]}")
    enc = audit.encoded[audit.encoded["encoded"].notna()]
    print("encoded attributes (out-of-fold, patient-grouped):")
    print(enc[["attribute", "metric", "value", "ci_low", "ci_high", "chance", "encoded"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for flag in audit.flags:
        print(f"FLAG {flag}")
    if not audit.flags:
        print("no flags")
    print(f"audit written to {index}")
    return 0
