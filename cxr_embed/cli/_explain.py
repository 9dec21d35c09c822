"""``cxr-embed explain``: saliency maps for a fine-tuned CNN or a saved classifier bundle.

``--model`` is either a ``.keras`` file written by :func:`cxr_embed.transfer.finetuning` (a CNN with its own
sigmoid head; its ``<stem>.finetune.json`` sidecar, when present, names the labels and the resize
mode) or a model bundle directory written by :func:`cxr_embed.save_model` / ``cxr-embed fit``. A
bundle holds only the classifier, so the backbone whose embeddings it was fitted on is rebuilt:
from explicit ``--backbone`` options, else from the configuration that the embedding store records
for the bundle's backbone fingerprint (the store named by ``--store`` or the one ``cxr-embed fit``
recorded in the bundle). The rebuilt backbone's fingerprint must equal the bundle's.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ._bundles import add_key_arguments, load_bundle

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["explain", "--model", "m.keras", "--image", "a.png", "--out", "o"])
    >>> args.method, args.limit, args.h5
    ('auto', None, True)
    """
    from cxr_embed.saliency.maps import METHODS

    p = subparsers.add_parser(
        "explain", help="saliency maps (overlay PNGs, saliency.h5, a CSV table) for a model",
        description="Explain a fine-tuned CNN (.keras file from cxr_embed.transfer.finetuning) or a model bundle "
                    "(cxr-embed fit) on one image or every image of a manifest: one overlay PNG per image, "
                    "all maps in saliency.h5 and a table explanations.csv (image_id, path, overlay, score, "
                    "error). For a bundle the backbone is rebuilt from --backbone options or from the "
                    "embedding store's record of the bundle's backbone fingerprint, and checked against it.")
    p.add_argument("--model", required=True,
                   help="a .keras file (fine-tuned CNN with its own head) or a bundle directory (cxr-embed fit)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="dataset table or folder (anything load_manifest reads)")
    src.add_argument("--image", help="one image file (DICOM, PNG, JPEG, TIFF)")
    p.add_argument("--manifest-format", default="auto", help="manifest format (default auto)")
    p.add_argument("--root", default=None, help="folder relative image paths are resolved against")
    p.add_argument("--method", default="auto", choices=METHODS,
                   help="saliency method (default auto: by model kind, cxr_embed.saliency.maps.AUTO_METHODS; "
                        "non-linear classifiers need a gradient-free one: occlusion, scorecam, faster-scorecam)")
    p.add_argument("--label", default=None,
                   help="label to explain (name or index); required when the model has several")
    p.add_argument("--cam-layer", default=None,
                   help="convolutional layer the CAM methods use (default: the backbone's tapped layer, "
                        "or the CNN's last 4-D layer)")
    p.add_argument("--faster-n", type=int, default=32,
                   help="channels used by faster-scorecam (default 32)")
    p.add_argument("--resize", default=None, choices=("pad", "resize", "crop"),
                   help=".keras model: how images are fitted to its input (default: the finetune "
                        "metadata's, else pad); bundle: the backbone's resize mode")
    g = p.add_argument_group("backbone of a bundle (default: rebuilt from the embedding store's record)")
    g.add_argument("--store", default=None,
                   help="embedding store whose record of the bundle's fingerprint describes the backbone "
                        "(default: the store cxr-embed fit recorded in the bundle)")
    g.add_argument("--backbone", default=None, help="backbone name (e.g. efficientnet_lite0) or a .keras model file")
    g.add_argument("--weights", default=None,
                   help="'imagenet' (default for names), 'none' for random weights, or a weights file")
    g.add_argument("--layer", default=None, help="tapped layer (default: the last convolutional activations)")
    g.add_argument("--pooling", default="avg", help="pooling of the tapped layer: avg (default), max, gem")
    g.add_argument("--preprocess", default="none",
                   help="for a .keras backbone: input normalisation mode (none, caffe, torch, tf)")
    g.add_argument("--input-size", type=int, default=None, help="square input size of the backbone")
    p.add_argument("--out", required=True, help="output folder (created)")
    add_key_arguments(p, loading=True)
    p.add_argument("--limit", type=int, default=None, help="explain only the first N images of the manifest")
    p.add_argument("--no-h5", dest="h5", action="store_false", help="do not write saliency.h5")
    p.set_defaults(func=_cmd_explain)


# --------------------------------------------------------------------------- loading models
def _is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "bundle.json").is_file()


def _load_keras(path: Path) -> tuple[Any, dict]:
    """(model, finetune metadata or {}) of a ``.keras`` file, loaded with safe_mode=True."""
    import keras

    import cxr_embed
    import cxr_embed.embed.backbones  # noqa: F401 - registers the library's serialisable layers

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - keras raises many types here
        raise cxr_embed.WeightsError(
            f"cannot load Keras model {str(path)!r}: {e}; expected a full model saved as .keras (e.g. by "
            "cxr_embed.finetune(out=...)); Lambda layers with code are refused (safe_mode=True)") from e
    sidecar = path.with_name(path.stem + ".finetune.json")
    meta: dict = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise cxr_embed.WeightsError(f"{sidecar}: unreadable finetune metadata ({e}); fix: delete or "
                                         "rewrite it (it names the labels and the resize mode)") from e
    return model, meta


def _backbone_from_args(args: argparse.Namespace):
    """A Backbone from explicit --backbone options (as ``cxr-embed extract`` builds it)."""
    import cxr_embed

    resize = args.resize or "pad"
    if args.backbone.endswith((".keras", ".h5")) or os.path.isfile(args.backbone):
        return cxr_embed.Backbone.from_keras(args.backbone, layer=args.layer, preprocess=args.preprocess,
                                             pooling=args.pooling, input_size=args.input_size, resize=resize)
    weights: Any = "imagenet" if args.weights is None else args.weights
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    return cxr_embed.Backbone(args.backbone, weights=weights, layer=args.layer, pooling=args.pooling,
                              input_size=args.input_size, resize=resize)


def _bundle_backbone(args: argparse.Namespace, bundle: Any):
    """The bundle's backbone: from --backbone options, a config in the bundle, or the store's record."""
    import cxr_embed

    fp = bundle.backbone_fingerprint
    if args.backbone is not None:
        backbone, origin = _backbone_from_args(args), "--backbone options"
    else:
        config = None
        extra = bundle.extra or {}
        for key in ("backbone_config", "backbone"):
            if args.store is None and isinstance(extra.get(key), dict):  # an explicit --store wins
                config, origin = extra[key], f"the bundle's extra[{key!r}]"
                break
        if config is None:
            store_path = args.store or extra.get("store")
            if not store_path:
                raise cxr_embed.BackboneError(
                    f"{args.model}: the bundle records no backbone configuration and no embedding store, so its "
                    f"backbone (fingerprint {fp[:12]}...) cannot be rebuilt; fix: pass --store EMB.h5 (the store "
                    "it was fitted from) or --backbone NAME/MODEL.keras with --layer/--pooling")
            if not Path(store_path).is_file():
                raise cxr_embed.StoreError(
                    f"embedding store {store_path!r} (which describes the backbone of {args.model}) does not exist; "
                    "fix: pass --store with its current path, or --backbone options")
            groups = cxr_embed.EmbeddingStore(store_path, mode="r").info()["backbones"]
            if fp not in groups:
                raise cxr_embed.FingerprintMismatchError(
                    f"{store_path}: holds no embeddings of the bundle's backbone fingerprint {fp[:12]}... (it has "
                    f"{[k[:12] for k in groups]}); fix: pass --store with the store the bundle was fitted from, "
                    "or --backbone options")
            config, origin = groups[fp]["config"], f"the record in {store_path}"
        if config.get("format") == "cxr_embed.composite":  # several passes (cxr-embed extract's default)
            from cxr_embed.embed.composite import CompositeEmbedding

            backbone = CompositeEmbedding.from_config(config)
        else:
            try:  # the fingerprint is checked below, against the bundle's, with the CLI's own hint
                backbone = cxr_embed.Backbone.from_config(config, check_fingerprint=False)
            except (cxr_embed.BackboneError, cxr_embed.WeightsError) as e:
                raise type(e)(f"{e}; or pass --backbone NAME/MODEL.keras (with --layer/--pooling/--preprocess as at "
                              "extraction time)") from e
    if backbone.fingerprint != fp:
        raise cxr_embed.FingerprintMismatchError(
            f"the backbone rebuilt from {origin} has fingerprint {backbone.fingerprint[:12]}... but {args.model} was "
            f"fitted on embeddings of {fp[:12]}...; fix: pass --backbone options (weights, layer, pooling, input "
            "size, resize) equal to those used at extraction time")
    return backbone


# --------------------------------------------------------------------------- command
def _cmd_explain(args: argparse.Namespace) -> int:
    import pandas as pd

    import cxr_embed
    from cxr_embed.saliency.maps import explain_manifest, resolve_method

    model_path = Path(args.model)
    kwargs: dict = {}
    label: Any = args.label
    if label is not None and label.isdigit():
        label = int(label)
    if _is_bundle(model_path):
        model = load_bundle(args, model_path)
        backbone = _bundle_backbone(args, model)
        what = f"bundle {model_path} ({model.extra.get('classifier', type(model.estimator).__name__)})"
        if label is None and len(model.labels) > 1:
            raise cxr_embed.BundleIntegrityError(
                f"{model_path} predicts {len(model.labels)} labels {model.labels}; fix: choose one with --label")
    elif model_path.is_file():
        model, meta = _load_keras(model_path)
        backbone = None
        kwargs["labels"] = meta.get("labels")
        kwargs["resize"] = args.resize or meta.get("resize", "pad")
        if isinstance(label, int):
            pass
        elif label is None and int(model.outputs[0].shape[-1]) > 1:
            raise cxr_embed.WeightsError(
                f"{model_path} has {int(model.outputs[0].shape[-1])} outputs {meta.get('labels', '')}; fix: "
                "choose one with --label")
        elif label is not None and not meta.get("labels"):
            raise cxr_embed.WeightsError(
                f"--label {label!r} given by name but {model_path} has no {model_path.stem}.finetune.json naming its "
                "outputs; fix: pass the output index (--label 0)")
        what = f"Keras model {model_path}"
    else:
        raise cxr_embed.WeightsError(
            f"--model {args.model!r} is neither a .keras file nor a bundle directory with bundle.json; fix: pass "
            "the file cxr_embed.finetune(out=...) wrote or the folder cxr-embed fit --out wrote")
    if args.cam_layer is not None:
        kwargs["layer"] = args.cam_layer

    if args.image is not None:
        if not Path(args.image).is_file():
            raise cxr_embed.ImageNotFoundError(args.image, "no such file (--image); fix: check the path")
        manifest = pd.DataFrame({"image_id": [Path(args.image).stem], "path": [str(args.image)]})
    else:
        manifest = cxr_embed.load_manifest(args.manifest, format=args.manifest_format, root=args.root,
                                           check_files=False)
    out = Path(args.out)
    try:
        table = explain_manifest(manifest, model, out, backbone=backbone, method=args.method, label=label,
                                 h5=args.h5, limit=args.limit, faster_n=args.faster_n, **kwargs)
    except ValueError as e:
        if isinstance(e, cxr_embed.CxrEmbedError):
            raise
        raise cxr_embed.BackboneError(f"cannot explain {what} with {args.method}: {e}") from e
    table.to_csv(out / "explanations.csv", index=False)
    n_ok = int(table["overlay"].notna().sum()) if len(table) else 0
    print(f"{n_ok} of {len(table)} images explained with {resolve_method(model, args.method)} ({what}); overlays, "
          f"{'saliency.h5, ' if args.h5 and n_ok else ''}explanations.csv in {out}")
    failed = table[table["error"].notna()] if len(table) else table
    for _, row in failed.head(5).iterrows():
        print(f"  failed: {row['path']}: {row['error']}")
    return 0 if n_ok or not len(table) else 1
