"""``cxr-embed localize``: do a model's saliency maps point inside radiologists' boxes?

Loads the model as ``cxr-embed explain`` does (a ``.keras`` fine-tuned CNN or a bundle whose
backbone is rebuilt and checked against its fingerprint), reads the boxes with
:func:`cxr_embed.load_boxes` scaled to the manifest's images, and runs
:func:`cxr_embed.evaluate_localization`. Writes the per-image table, the summary with
patient-bootstrap intervals beside the baselines, overlays of the best and worst cases with the
boxes drawn, and a self-contained HTML fragment (``localization.html``) for reports.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._bundles import add_key_arguments, load_bundle

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``localize`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> a = parser.parse_args(["localize", "--model", "m/", "--manifest", "l.csv", "--boxes", "b.csv", "--out", "o"])
    >>> a.method, a.tolerance, a.n_overlays
    ('auto', 0, 3)
    """
    from cxr_embed.saliency.maps import METHODS

    p = subparsers.add_parser(
        "localize", help="score saliency maps against radiologists' boxes (pointing game, energy, IoU) with baselines",
        description="Explain every boxed image of a manifest and score the maps against the boxes: pointing game, "
                    "energy inside the boxes and IoU of the top region, with patient-bootstrap intervals, beside "
                    "random, image-centre and lung-field baselines on the same images. Writes localization.csv, "
                    "summary.csv, differences.csv, overlays of the best and worst cases and localization.html.")
    p.add_argument("--model", required=True, help="a .keras file (fine-tuned CNN) or a bundle directory (cxr-embed fit)")
    p.add_argument("--manifest", required=True, help="dataset table or folder (anything load_manifest reads)")
    p.add_argument("--boxes", required=True, help="box table: NIH BBox_List_2017.csv, image_id/finding/x/y/w/h, or a CSV")
    p.add_argument("--boxes-format", default="auto", help="box table layout: auto, nih, cxr_embed, csv")
    p.add_argument("--source-size", type=int, default=None,
                   help="square size of the frame the boxes were drawn on (default: 1024 for NIH, else the images')")
    p.add_argument("--finding", default=None, help="use only boxes of this finding (e.g. pneumonia)")
    p.add_argument("--manifest-format", default="auto", help="manifest format (default auto)")
    p.add_argument("--root", default=None, help="folder relative image paths are resolved against")
    p.add_argument("--method", default="auto", choices=METHODS, help="saliency method (default auto: by model kind)")
    p.add_argument("--label", default=None, help="label to explain (name or index); required when the model has several")
    p.add_argument("--cam-layer", default=None, help="convolutional layer of CAM methods")
    p.add_argument("--tolerance", type=int, default=0, help="pointing-game slack in pixels (default 0)")
    p.add_argument("--deletion", action="store_true", help="also measure deletion AUC against random maps")
    p.add_argument("--n-bootstrap", type=int, default=2000, help="patient-bootstrap resamples (default 2000)")
    p.add_argument("--n-overlays", type=int, default=3, help="best and worst overlays written (default 3 each)")
    p.add_argument("--resize", default=None, choices=("pad", "resize", "crop"),
                   help=".keras model: how images are fitted to its input; bundle: the backbone's resize mode")
    g = p.add_argument_group("backbone of a bundle (as for cxr-embed explain)")
    g.add_argument("--store", default=None, help="embedding store whose record describes the bundle's backbone")
    g.add_argument("--backbone", default=None, help="backbone name or a .keras model file")
    g.add_argument("--weights", default=None, help="'imagenet' (default for names), 'none', or a weights file")
    g.add_argument("--layer", default=None, help="tapped layer")
    g.add_argument("--pooling", default="avg", help="pooling of the tapped layer")
    g.add_argument("--preprocess", default="none", help="for a .keras backbone: input normalisation mode")
    g.add_argument("--input-size", type=int, default=None, help="square input size of the backbone")
    p.add_argument("--out", required=True, help="output folder (created)")
    add_key_arguments(p, loading=True)
    p.set_defaults(func=_cmd_localize)


def _cmd_localize(args: argparse.Namespace) -> int:
    import cxr_embed
    from cxr_embed.cli._explain import _bundle_backbone, _is_bundle, _load_keras
    from cxr_embed.saliency.localization import localization_html, save_localization_overlays

    label: Any = args.label
    if label is not None and label.isdigit():
        label = int(label)
    model_path = Path(args.model)
    kwargs: dict = {}
    if _is_bundle(model_path):
        model = load_bundle(args, model_path)
        backbone = _bundle_backbone(args, model)
        if label is None and len(model.labels) > 1:
            raise cxr_embed.BundleIntegrityError(
                f"{model_path} predicts {len(model.labels)} labels {model.labels}; fix: choose one with --label")
    elif model_path.is_file():
        model, meta = _load_keras(model_path)
        backbone = None
        kwargs["labels"] = meta.get("labels")
        kwargs["resize"] = args.resize or meta.get("resize", "pad")
    else:
        raise cxr_embed.WeightsError(
            f"--model {args.model!r} is neither a .keras file nor a bundle directory with bundle.json; fix: pass "
            "the file cxr_embed.finetune(out=...) wrote or the folder cxr-embed fit --out wrote")
    if args.cam_layer is not None:
        kwargs["layer"] = args.cam_layer
    manifest = cxr_embed.load_manifest(args.manifest, format=args.manifest_format, root=args.root, check_files=False)
    boxes = cxr_embed.load_boxes(args.boxes, format=args.boxes_format, image_size=manifest,
                                 source_size=args.source_size, finding=args.finding)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = cxr_embed.evaluate_localization(model, manifest, boxes, backbone=backbone, label=label,
                                                 method=args.method, tolerance=args.tolerance, deletion=args.deletion,
                                                 n_bootstrap=args.n_bootstrap, keep_maps=args.n_overlays > 0, **kwargs)
    except ValueError as e:
        if isinstance(e, cxr_embed.CxrEmbedError):
            raise
        raise cxr_embed.BackboneError(f"cannot explain {args.model} with {args.method}: {e}") from e
    result.per_image.to_csv(out / "localization.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    result.differences.to_csv(out / "differences.csv", index=False)
    overlays = save_localization_overlays(result, out / "overlays", n=args.n_overlays) if args.n_overlays > 0 else {}
    (out / "localization.html").write_text(localization_html(result, overlays), encoding="utf-8")
    m, lo, hi = result.value("pointing")
    print(f"{len(result.per_image)} boxed images explained with {result.method}: pointing game {m:.2f} "
          f"[{lo:.2f}, {hi:.2f}]")
    for _, r in result.summary[result.summary["metric"].isin(["pointing", "energy"])].iterrows():
        print(f"  {r['map']:12s} {r['metric']:8s} {r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    print(f"tables, overlays and localization.html in {out}")
    return 0
