"""Benchmark of reading real radiographs into CNN inputs; prints one JSON object on stdout.

Per format, decode + prepare to ``--input-size`` (224) in ms per image, wall and CPU time, best of
``--repeats`` interleaved rounds (other jobs share the machine: every method is timed in the same
round, one after the other, and the least-disturbed round is kept):

- ``plain``: what a user writes by hand: pydicom ``pixel_array`` (DICOM) or Pillow ``load`` (PNG,
  JPEG), then an area resize of the stored integers (Pillow ``BOX``) -- no windowing, no
  inversion, no checks (the issue's baseline);
- ``full_decode``: pydicom ``pixel_array`` alone, Pillow ``load`` for a plain ``.j2k`` (JPEG 2000
  files: what reduced decoding saves);
- ``before``: cxr_embed before 0.3, ``prepare_image(read_image(path)[0], interpolation="bilinear")``;
- ``two_step``: ``prepare_image(read_image(path)[0])`` (area, float at full resolution);
- ``read_prepared``: :func:`cxr_embed.read_prepared` (what ``extract`` runs), ``decode="full"``;
- ``read_prepared_reduced``: the same with ``decode="reduced"``.

Files: pydicom-data's ``RG1_UNCR``, ``RG1_J2KR``, ``RG1_J2KI``, ``RG3_UNCR``; RG1_J2KR's codestream
written as a plain ``RG1_J2KR.j2k`` file; the 1024 px NIH PNGs of
``../shared/data/nih_cxr14_1024_sample``; a JPEG (quality 95) made from the first of them.

Then end-to-end ``extract`` images/s on the NIH PNGs (and the DICOMs, repeated to a batch) against
the model-only forward pass, per backbone, and the decode rate per core, so that a GPU machine's
throughput can be stated on paper: ``min(cores x decode rate, forward rate)``.

Usage::

    python bench/reading.py                    # ~5 minutes on 2 busy cores
    python bench/reading.py --quick            # smoke: 1 repeat, 8 PNGs, no DenseNet
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_EMBED_SHARED_DATA", ROOT.parent / "shared" / "data"))
DICOMS = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_UNCR.dcm")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn, paths) -> tuple[float, float]:
    """(wall ms, CPU ms) per image of ``fn`` over ``paths``."""
    t, c = time.perf_counter(), _cpu()
    for p in paths:
        fn(p)
    n = len(paths)
    return 1000 * (time.perf_counter() - t) / n, 1000 * (_cpu() - c) / n


def _methods(size: int):
    import pydicom
    from PIL import Image

    from cxr_embed import prepare_image, read_image, read_prepared
    from cxr_embed.io.preprocessing import _geometry

    def plain(p):
        if str(p).endswith(".dcm"):
            a = pydicom.dcmread(p).pixel_array
            im = Image.fromarray(a)
        else:
            im = Image.open(p)
            im.load()
        nh, nw, _, _ = _geometry((im.size[1], im.size[0]), (size, size), "pad")
        return im.resize((nw, nh), Image.BOX)

    def full_decode(p):
        if str(p).endswith(".j2k"):
            with Image.open(p) as im:
                im.load()
                return im
        return pydicom.dcmread(p).pixel_array

    return {
        "plain": plain,
        "full_decode": full_decode,
        "before": lambda p: prepare_image(read_image(p)[0], (size, size), interpolation="bilinear"),
        "two_step": lambda p: prepare_image(read_image(p)[0], (size, size)),
        "read_prepared": lambda p: read_prepared(p, (size, size)),
        "read_prepared_reduced": lambda p: read_prepared(p, (size, size), decode="reduced"),
    }


def bench_formats(args, files: dict) -> dict:
    methods = _methods(args.input_size)
    runs: dict = {f: {m: [] for m in methods} for f in files}
    for _ in range(args.repeats):
        for fmt, paths in files.items():
            for name, fn in methods.items():
                if name == "full_decode" and not fmt.endswith(("dcm", "j2k")):
                    continue
                if name == "before" and "J2K" in fmt and args.quick:
                    continue
                runs[fmt][name].append(_timed(fn, paths))
    out = {}
    for fmt, per in runs.items():
        row = {"n_files": len(files[fmt])}
        for name, vals in per.items():
            if vals:
                row[name] = {"wall_ms": round(min(v[0] for v in vals), 2), "cpu_ms": round(min(v[1] for v in vals), 2)}
        base = row["plain"]["cpu_ms"]
        row["ratio_read_prepared_to_plain_cpu"] = round(row["read_prepared"]["cpu_ms"] / base, 3)
        row["ratio_read_prepared_to_plain_wall"] = round(row["read_prepared"]["wall_ms"] / row["plain"]["wall_ms"], 3)
        if "before" in row:
            row["speedup_vs_before_cpu"] = round(row["before"]["cpu_ms"] / row["read_prepared"]["cpu_ms"], 2)
        if "full_decode" in row:
            row["speedup_reduced_vs_full_decode_cpu"] = round(
                row["full_decode"]["cpu_ms"] / row["read_prepared_reduced"]["cpu_ms"], 2)
        row["decode_images_per_second_per_core"] = round(1000 / row["read_prepared"]["cpu_ms"], 1)
        out[fmt] = row
    return out


def make_backbone(name: str, size: int):
    import cxr_embed

    with contextlib.redirect_stdout(sys.stderr):
        try:
            return cxr_embed.Backbone(name, weights="imagenet", input_size=size), "imagenet"
        except Exception:  # noqa: BLE001 - offline: DenseNet's Keras weights need a download
            return cxr_embed.Backbone(name, weights=None, input_size=size), None


def bench_extract(args, pngs, dicoms, tmp: Path) -> dict:
    import cxr_embed

    out = {}
    for name in args.backbones:
        bb, weights = make_backbone(name, args.input_size)
        x = np.random.default_rng(0).random((args.batch_size, *bb.input_size, 3), dtype=np.float32) * 255
        bb.embed(x, batch_size=args.batch_size)
        runs: dict = {"model": [], "png": [], "dicom": []}
        for rep in range(args.repeats):
            n_batches = max(1, len(pngs) // args.batch_size)
            t = time.perf_counter()
            for _ in range(n_batches):
                bb.embed(x, batch_size=args.batch_size)
            runs["model"].append(n_batches * args.batch_size / (time.perf_counter() - t))
            for kind, paths in (("png", pngs), ("dicom", dicoms)):
                if not paths:
                    continue
                ids = [f"{kind}{i}" for i in range(len(paths))]
                import pandas as pd

                r = cxr_embed.extract(pd.DataFrame({"image_id": ids, "path": paths}), bb,
                                      tmp / f"{name}-{kind}-{rep}.h5", batch_size=args.batch_size,
                                      workers=args.workers, progress=False)
                assert r.n_done == len(paths) and r.n_failed == 0, str(r)
                runs[kind].append(r.images_per_second)
        model = max(runs["model"])
        row = {"weights": weights, "model_only_images_per_second": round(model, 2),
               "model_core_ms_per_image": round(1000 * (os.cpu_count() or 1) / model, 1),
               "all_runs": {k: [round(v, 2) for v in vs] for k, vs in runs.items()}}
        for kind in ("png", "dicom"):
            if runs[kind]:
                row[f"extract_{kind}_images_per_second"] = round(max(runs[kind]), 2)
                row[f"ratio_{kind}_to_model"] = round(max(runs[kind]) / model, 3)
        out[name] = row
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--n-png", type=int, default=64, help="NIH PNGs used (at most 64)")
    p.add_argument("--backbones", default="efficientnet_lite0,densenet121")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--dicom-copies", type=int, default=8, help="each DICOM repeated this often in the extract run")
    p.add_argument("--no-extract", action="store_true", help="decode + prepare only")
    p.add_argument("--quick", action="store_true", help="1 repeat, at most 8 PNGs, Lite0 only, DICOM copies 1")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.n_png, args.backbones, args.dicom_copies = 1, min(args.n_png, 8), "efficientnet_lite0", 1
    args.backbones = [b for b in args.backbones.split(",") if b]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.simplefilter("ignore")  # the public-salt warning of every DICOM read

    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    import cxr_embed
    from cxr_embed.embed.extraction import default_workers

    dicoms = {n: get_testdata_file(n, download=False) for n in DICOMS}
    missing = [n for n, v in dicoms.items() if v is None]
    pngs = sorted(glob.glob(str(SHARED / "nih_cxr14_1024_sample" / "images" / "*.png")))[: args.n_png]
    if missing or not pngs:
        print(json.dumps({"error": f"real files missing: pydicom-data {missing}, NIH PNGs {len(pngs)}; "
                                   "fix: pip install pydicom-data; ../shared/data/nih_cxr14_1024_sample"}))
        sys.exit(2)
    out: dict = {"input_size": args.input_size, "repeats": args.repeats, "cpu_count": os.cpu_count(),
                 "cxr_embed": cxr_embed.__version__, "pillow": Image.__version__,
                 "workers": args.workers if args.workers is not None else default_workers()}
    with tempfile.TemporaryDirectory(prefix="cxr_embed_reading_") as tmp:
        tmp = Path(tmp)
        jpeg = tmp / "nih.jpg"
        Image.open(pngs[0]).save(jpeg, quality=95)
        files = {n: [dicoms[n]] for n in DICOMS}
        j2k = tmp / "RG1_J2KR.j2k"  # the same codestream as a plain file (Pillow's reduce, no DICOM)
        j2k.write_bytes(next(generate_frames(pydicom.dcmread(dicoms["RG1_J2KR.dcm"]).PixelData, number_of_frames=1)))
        files["RG1_J2KR.j2k"] = [str(j2k)]
        files["nih_png_1024"] = pngs
        files["nih_jpeg_1024"] = [str(jpeg)]
        for n in DICOMS:  # DICOMs: a few reads each, so one image is not one sample
            files[n] = files[n] * (1 if "J2K" in n else 3)
        files["nih_jpeg_1024"] *= 8
        t = time.perf_counter()
        out["formats"] = bench_formats(args, files)
        out["formats_seconds"] = round(time.perf_counter() - t, 1)
        if not args.no_extract:
            uncompressed = [dicoms["RG1_UNCR.dcm"], dicoms["RG3_UNCR.dcm"]] * args.dicom_copies
            out["extract"] = bench_extract(args, pngs, uncompressed, tmp)
            cores = os.cpu_count() or 1
            rate = out["formats"]["nih_png_1024"]["decode_images_per_second_per_core"]
            out["on_paper"] = {
                "png_decode_images_per_second_per_core": rate,
                "rg1_uncr_decode_images_per_second_per_core":
                    out["formats"]["RG1_UNCR.dcm"]["decode_images_per_second_per_core"],
                "rg1_j2kr_reduced_images_per_second_per_core":
                    round(1000 / out["formats"]["RG1_J2KR.dcm"]["read_prepared_reduced"]["cpu_ms"], 2),
                "note": f"with k decoding workers, extract reaches about min(k x decode rate, model rate); "
                        f"here {cores} cores",
            }
    goals = {}
    for fmt in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "nih_png_1024"):
        goals[f"{fmt}: read_prepared <= 1.25 x plain (cpu)"] = out["formats"][fmt]["ratio_read_prepared_to_plain_cpu"] <= 1.25
    for fmt in ("RG1_J2KR.dcm", "RG1_J2KR.j2k"):
        goals[f"{fmt}: reduced >= 3 x faster than full decode (cpu)"] = (
            out["formats"][fmt]["speedup_reduced_vs_full_decode_cpu"] >= 3)
    for name, r in out.get("extract", {}).items():
        want = 0.85 if "lite" in name else 0.95
        goals[f"{name}: extract png >= {want} x model only"] = r.get("ratio_png_to_model", 0) >= want
    out["goals"] = goals
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
