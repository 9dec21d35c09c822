"""A folder of DICOM files
=======================

A folder of DICOM files -> manifest -> embeddings -> what the store holds.

Usage:

    python examples/dicom_folder.py                       # writes synthetic DICOMs (half MONOCHROME1) first
    python examples/dicom_folder.py --data /path/to/dicoms --store my.h5
    python examples/dicom_folder.py --n 8 --backbone mobilenet_v2 --weights none --input-size 32

``load_manifest(format="dicom_folder")`` finds DICOM files by content (not by suffix), reads
PHI-free metadata and keys patients by a salted hash of PatientID (``$CXR_EMBED_SALT``); the
images are decoded radiologically (modality LUT, VOI LUT/window, MONOCHROME1 inverted) before
the CNN sees them. A DICOM folder carries no labels: this example stops at the embeddings,
which any classifier can use later with a label table joined on ``image_id``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cxr_embed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder of DICOM files (default: synthetic)")
    p.add_argument("--store", type=Path, default=None, help="HDF5 store (default <out>/embeddings.h5)")
    p.add_argument("--n", type=int, default=24, help="synthetic images per site (default 24)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cxr_embed_dicom_"))

    folder = args.data
    if folder is None:
        from cxr_embed.datasets import SITES, make_synthetic_cxr, write_dataset

        folder = out / "dicoms"
        for site, seed in (("A", 0), ("B", 1)):  # B is stored MONOCHROME1
            ds = make_synthetic_cxr(args.n, site=site, size=args.size, seed=seed)
            write_dataset(ds, folder / site, format="dicom", monochrome1=SITES[site].monochrome1)
    df = cxr_embed.load_manifest(folder, format="dicom_folder")
    print(f"{len(df)} DICOM files of {df['patient_id'].nunique()} patients under {folder}")
    meta_cols = [c for c in ("modality", "view", "photometric_interpretation", "sex") if c in df.columns]
    for c in meta_cols:
        print(f"  {c}: {df[c].value_counts(dropna=False).to_dict()}")

    backbone = cxr_embed.Backbone(args.backbone, weights=None if args.weights == "none" else args.weights,
                                  input_size=args.input_size)
    store = cxr_embed.EmbeddingStore(args.store or out / "embeddings.h5")
    report = cxr_embed.extract(df, backbone, store, progress=False)
    print(report)
    again = cxr_embed.extract(df, backbone, store, progress=False)
    print(f"second run: {again.n_done} embedded, {again.n_cached} from the cache")
    ids, X = store.load(backbone, df["image_id"])
    print(f"X: {X.shape} {X.dtype}")
    print(json.dumps(store.info(), indent=1, default=str))
    return 0 if report.n_failed == 0 else 1


if __name__ == "__main__":
    status = main()
    if status:  # no SystemExit on success: the docs gallery runs this script inside the build
        sys.exit(status)
