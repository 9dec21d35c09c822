"""``cxr-embed extract``: fill an embedding store (``cxr-embed store ...`` lives in :mod:`cxr_embed.cli._store`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``extract`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["extract", "--manifest", "m.csv", "--backbone", "densenet121", "--store", "s.h5"]).batch_size
    32
    """
    p = subparsers.add_parser(
        "extract", help="embed every image of a manifest into an HDF5 store (resumable)",
        description="Read the images of a manifest, run them through a backbone in batches and append the "
                    "embeddings to an HDF5 store. Ids already in the store are skipped, so re-running after "
                    "an interruption computes only what is missing.")
    p.add_argument("--manifest", required=True, help="dataset table or folder (anything load_manifest reads)")
    p.add_argument("--backbone", default=None,
                   help="backbone name (e.g. efficientnet_lite0, densenet121), a .keras model file, or an embedding "
                        "label of several passes, e.g. 'efficientnet_lite0@224|320 + efficientnet_lite1@240' "
                        "(multi-size means and fused backbones, as cxr-embed search names them); default: the "
                        "library's default embedding, 'efficientnet_lite0@224|320|448 + efficientnet_lite1@224|320' "
                        "(five passes per image; efficientnet_lite0 is the one-pass alternative)")
    p.add_argument("--parts-store", default=None,
                   help="with an embedding label: where the single passes are cached (default <store>.parts.h5)")
    p.add_argument("--weights", default=None,
                   help="'imagenet' (default for names), 'none' for random weights, or a weights file")
    p.add_argument("--layer", default=None, help="layer to tap (default: the last convolutional activations)")
    p.add_argument("--pooling", default="avg", help="pooling of the tapped layer: avg (default), max, gem")
    p.add_argument("--input-size", type=int, default=None,
                   help="CNN input size in pixels (default: the backbone's own, or the model file's)")
    p.add_argument("--tta", default="none", choices=["none", "flip"],
                   help="test-time augmentation: flip = mean with the left-right mirror (default none)")
    p.add_argument("--preprocess", default="none",
                   help="for a .keras file: input normalisation mode (none, caffe, torch, tf); default none")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                   help="arithmetic of the forward pass: auto (default) = mixed_float16 on a GPU, float32 on CPU")
    p.add_argument("--store", required=True, help="HDF5 store (created if missing)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding worker processes (default: CPU count - 1, at most 8; 0 = in-process)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images whose header declares more pixels (default 100 megapixels)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16"], help="storage type of a new group")
    p.add_argument("--engine", default=None, choices=["local", "ray"],
                   help="local (default): decoding workers in this process; ray: a Ray Data pipeline on a Ray "
                        "cluster (pip install 'cxr_embed[ray]'), this process stays the only writer of the store")
    p.add_argument("--ray-address", default=None,
                   help="implies --engine ray: cluster address (auto, HOST:6379); without it, a local Ray "
                        "instance sized to this machine is started and shut down")
    p.add_argument("--ray-actors", type=int, default=None,
                   help="implies --engine ray: embedding actors (default: one per GPU of the cluster, else 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=_cmd_extract)


def _backbone(args):
    import cxr_embed
    from cxr_embed.embed.composite import DEFAULT_EMBEDDING, CompositeEmbedding, is_composite

    tta = None if args.tta == "none" else args.tta
    if args.backbone is None:
        args.backbone = DEFAULT_EMBEDDING
    weights: Any = "imagenet" if args.weights is None else args.weights
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if is_composite(args.backbone):  # an embedding label: several passes combined
        given = [f for f, v in (("--layer", args.layer), ("--input-size", args.input_size), ("--tta", tta),
                                ("--pooling", None if args.pooling == "avg" else args.pooling)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be combined with an embedding label ({args.backbone!r}): "
                             "the label sets sizes, layer and TTA, e.g. 'efficientnet_lite0@224|320+flip'")
        return CompositeEmbedding(args.backbone, parts_store=args.parts_store, weights=weights,
                                  precision=args.precision)
    if args.parts_store is not None:
        raise ValueError("--parts-store is an option of an embedding label (--backbone 'name@size + ...')")
    if args.backbone.endswith((".keras", ".h5")) or os.path.isfile(args.backbone):
        return cxr_embed.Backbone.from_keras(args.backbone, layer=args.layer, preprocess=args.preprocess,
                                             pooling=args.pooling, precision=args.precision,
                                             input_size=args.input_size, tta=tta)
    return cxr_embed.Backbone(args.backbone, weights=weights, layer=args.layer, pooling=args.pooling,
                              precision=args.precision, input_size=args.input_size, tta=tta)


def _cmd_extract(args: argparse.Namespace) -> int:
    import cxr_embed

    ray_flags = args.ray_address is not None or args.ray_actors is not None
    if args.engine == "local" and ray_flags:
        print("error: --ray-address and --ray-actors are options of --engine ray, not --engine local", file=sys.stderr)
        return 2
    manifest = cxr_embed.load_manifest(args.manifest)
    try:
        backbone = _backbone(args)
    except ValueError as e:
        if isinstance(e, cxr_embed.CxrEmbedError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = args.engine or ("ray" if ray_flags else "local")
    ray_kw = {}
    if engine == "ray":
        ray_kw = {"ray_address": args.ray_address,
                  "ray_options": {"actors": args.ray_actors} if args.ray_actors is not None else None}
    report = cxr_embed.extract(manifest, backbone, args.store, batch_size=args.batch_size,
                               workers=args.workers, progress=args.progress, dtype=args.dtype,
                               engine=engine, **ray_kw,
                               **({} if args.max_pixels is None else {"max_pixels": args.max_pixels}))
    if args.json:
        d = dict(vars(report))
        d["failures"] = [list(f) for f in report.failures]
        print(json.dumps(d))
    else:
        print(report)
    return 1 if report.n_failed and not report.n_done and not report.n_cached else 0
