"""Reading a folder as the models see it
=====================================

Read every image of a folder the way cxr_embed's models will see it, and print what came out.

Usage:

    CXR_EMBED_SALT=my-project-salt \
    python examples/read_dicom_folder.py FOLDER [--limit N] [--voi auto|lut|...] [--frame K]

For each file (DICOM recognised by content, PNG, JPEG, TIFF; sorted, recursive) it prints the
shape, the value range and the PHI-free metadata (source, modality, view, photometric
interpretation, VOI step, patient_key: a salted hash, salt from ``$CXR_EMBED_SALT``). Files that cannot be read are listed with the
library's error message, which names the file and the fix. The exit status is 1 when any
file failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cxr_embed.exceptions import ImageReadError
from cxr_embed.io.images import read_image

_SKIP_SUFFIXES = {".csv", ".txt", ".md", ".json", ".py", ".html"}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in _SKIP_SUFFIXES
                  and not p.name.startswith("."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with DICOM / PNG / JPEG / TIFF files")
    parser.add_argument("--limit", type=int, default=None, help="read at most N files")
    parser.add_argument("--voi", default="auto", choices=["auto", "lut", "window", "minmax", "none"])
    parser.add_argument("--frame", type=int, default=None, help="frame of multi-frame files")
    args = parser.parse_args(argv)

    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    files = _files(args.folder)[: args.limit]
    ok = failed = 0
    for path in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                image, meta = read_image(path, voi=args.voi, frame=args.frame)
            except ImageReadError as e:
                failed += 1
                print(f"FAIL {path.name}: {type(e).__name__}: {e.reason}")
                continue
        ok += 1
        keys = ("source", "modality", "view_position", "photometric_interpretation", "voi_applied",
                "bit_depth", "patient_key")
        shown = " ".join(f"{k}={meta[k]}" for k in keys if meta.get(k) is not None)
        print(f"OK   {path.name}: shape={image.shape} range=[{image.min():.3f}, {image.max():.3f}] "
              f"mean={image.mean():.3f} {shown}")
        for w in caught:
            print(f"     warning: {w.message}")
    print(f"read {ok} of {len(files)} file(s), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
