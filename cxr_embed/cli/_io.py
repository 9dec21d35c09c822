"""``cxr-embed info`` and ``cxr-embed manifest``: what the reader and the manifest loader see."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

# cxr_embed.io.manifest.FORMATS, spelled out so that building the parser imports no pandas
# (tests/test_manifest_hostile.py checks that the two agree)
MANIFEST_FORMATS = ("csv", "chexpert", "nih", "padchest", "mimic", "rsna", "vindr", "siim",
                    "folders", "dicom_folder", "images")

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` and ``manifest`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["info", "x.dcm", "--frame", "2"]).frame
    2
    """
    p = subparsers.add_parser(
        "info", help="show what the image reader sees in one file",
        description="Read one image (DICOM, PNG, JPEG, TIFF) exactly as cxr_embed does and print its "
                    "PHI-free metadata, shape and value statistics (the image is float32 in [0, 1], air dark).")
    p.add_argument("file", help="image file; DICOM is recognised by content, not by suffix")
    p.add_argument("--voi", default="auto",
                   help="DICOM VOI step: auto (default: VOI LUT, then window, then the full BitsStored "
                        "range), lut, window, minmax or none; see cxr_embed.read_image")
    p.add_argument("--window", nargs=2, type=float, metavar=("CENTER", "WIDTH"),
                   help="explicit DICOM window centre and width")
    p.add_argument("--frame", type=int, default=None, help="frame index of a multi-frame DICOM")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images whose header declares more pixels (default 100 megapixels)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_cmd_info)

    p = subparsers.add_parser(
        "manifest", help="summarise a dataset table or image folder",
        description="Load a dataset (generic CSV; the tables of NIH ChestX-ray14 and its Google 2019 labels, "
                    "CheXpert, PadChest, MIMIC-CXR-JPG, RSNA Pneumonia, VinDr-CXR, SIIM-ACR; class folders, an "
                    "image folder or a DICOM folder) and print images, patients, label counts, views and sexes.")
    p.add_argument("path", help="CSV file or folder")
    p.add_argument("--format", default="auto", choices=("auto", *MANIFEST_FORMATS),
                   help="auto (default) or one of: " + ", ".join(MANIFEST_FORMATS))
    p.add_argument("--root", default=None, help="folder that relative image paths are resolved against")
    p.add_argument("--no-check-files", dest="check_files", action="store_false",
                   help="do not require the image files to exist")
    p.add_argument("--labels", default=None,
                   help="generic CSV: comma-separated label columns (overrides auto-detection)")
    p.add_argument("--id-column", default=None,
                   help="generic CSV: column to use as image id ('path' derives ids from paths)")
    p.add_argument("--rule", default=None, choices=("any", "majority"),
                   help="VinDr-CXR: a finding is positive when any radiologist marked it (default) or most did")
    p.add_argument("--patient-pattern", default=None,
                   help=r"class folders: regex whose first group is the patient id, e.g. '(person\d+)_'")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_manifest)


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    import cxr_embed

    kwargs: dict[str, Any] = {"voi": args.voi, "frame": args.frame}
    if args.max_pixels is not None:
        kwargs["max_pixels"] = args.max_pixels
    if args.window is not None:
        kwargs["window"] = tuple(args.window)
    try:
        image, meta = cxr_embed.read_image(args.file, **kwargs)
    except cxr_embed.CxrEmbedError:
        raise  # a bad file: main() prints its one-line message
    except (ValueError, TypeError) as e:  # a bad --voi / --window value, not a bad file
        print(f"error: {e}", file=sys.stderr)
        return 2
    image = np.asarray(image)
    summary = {
        "file": str(args.file),
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "min": float(np.min(image)),
        "max": float(np.max(image)),
        "mean": float(np.mean(image)),
        "std": float(np.std(image)),
        "meta": dict(meta),
    }
    if args.json:
        print(json.dumps(summary, default=_jsonable, sort_keys=False))
        return 0
    print(f"file:   {summary['file']}")
    print(f"shape:  {' x '.join(str(n) for n in image.shape)} (rows x columns), {summary['dtype']}")
    print(f"range:  min {summary['min']:.4f}  max {summary['max']:.4f}  "
          f"mean {summary['mean']:.4f}  std {summary['std']:.4f}")
    if meta:
        print("meta:")
        width = max(len(str(k)) for k in meta)
        for key, value in meta.items():
            print(f"  {str(key):<{width}}  {_jsonable(value) if not isinstance(value, str) else value}")
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    import cxr_embed

    labels = None
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    df = cxr_embed.load_manifest(args.path, format=args.format, root=args.root, check_files=args.check_files,
                                 labels=labels, id_column=args.id_column, patient_pattern=args.patient_pattern,
                                 rule=args.rule)
    s = cxr_embed.summarize_manifest(df)
    if args.json:
        print(json.dumps(s, default=_jsonable))
        return 0
    print(f"source:   {s['source']}")
    print(f"format:   {s['format']}")
    ipp = s["images_per_patient"]
    print(f"images:   {s['n_images']}")
    print(f"patients: {s['n_patients']} (images per patient: min {ipp['min']}, "
          f"median {ipp['median']:g}, max {ipp['max']})")
    print(f"paths outside root: {s['n_outside_root']}")
    if s["labels"]:
        width = max(9, *(len(k) for k in s["labels"]))
        print("labels:")
        print(f"  {'':<{width}}  {'positive':>8}  {'negative':>8}  {'uncertain':>9}  {'missing':>7}")
        for name, c in s["labels"].items():
            print(f"  {name:<{width}}  {c['positive']:>8}  {c['negative']:>8}  {c['uncertain']:>9}  {c['missing']:>7}")
    else:
        print("labels:   none")
    for key in ("views", "frontal_lateral", "sex"):
        if s[key]:
            print(f"{key + ':':<9} " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
    if s["age"]:
        a = s["age"]
        if a["min"] is None:
            print(f"age:      all missing ({a['missing']})")
        else:
            print(f"age:      {a['min']:g}-{a['max']:g} years (median {a['median']:g}), missing {a['missing']}")
    return 0


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, tuples and other objects in metadata."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple, str, int, float, bool)) or value is None:
        return value
    return str(value)
