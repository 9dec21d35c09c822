"""Benchmark of load_manifest on the published label tables; prints one JSON object on stdout.

Each table is loaded in fresh Python processes (``check_files=False``: the tables come without
their images):

- once plain (``--repeats`` times: the least ``cpu_s`` and ``wall_s``, the largest ``growth_mib``),
  reporting ``cpu_s`` (CPU time of the call, less disturbed than wall time by other jobs on a
  shared machine), ``wall_s``, ``baseline_rss_mib`` (the process's maximum RSS after importing numpy,
  pandas, pyarrow when installed, and cxr_embed's manifest module, before the call: what
  ``/usr/bin/time -v`` reports for an import-only process), ``peak_rss_mib`` (maximum RSS after
  the call) and ``growth_mib`` (their difference: what loading the table costs);
- once under :mod:`tracemalloc`, reporting ``tracemalloc_peak_mib`` (the most memory the call held
  at once through Python's allocators, numpy and pandas included), ``result_mib`` (the
  DataFrame's ``memory_usage(deep=True)``, which counts a str shared by many cells once per cell),
  ``shape`` and ``label_dtypes``.

``--no-pyarrow`` hides pyarrow from the children (pandas then keeps its own string storage), as on
an installation without ``ray[data]``. ``goals`` (issue 14): every table under 10 s of CPU and
PadChest under 400 MiB of RSS growth.

Usage::

    python bench/manifests.py                        # the six tables, ~1 minute on 2 busy cores
    python bench/manifests.py --tables padchest --no-pyarrow --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_EMBED_SHARED_DATA", ROOT.parent / "shared" / "data"))
TABLES = {
    "nih": "Data_Entry_2017_v2020.csv.gz",
    "google2019": "google2019_nih-chest-xray-labels.csv.gz",
    "chexpert_train": "chexpert_train.csv.gz",
    "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "rsna": "kaggle_stage_2_train_labels.csv.zip",
    "siim": "siim-pneumothorax-train-rle.csv.gz",
}
MIB = 1 << 20


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(table: str, trace: bool, no_pyarrow: bool) -> dict:
    if no_pyarrow:
        sys.modules["pyarrow"] = None  # import pyarrow -> ImportError: pandas' own string storage
    import gc
    import warnings

    import numpy  # noqa: F401
    import pandas as pd
    try:
        import pyarrow  # noqa: F401
        arrow = True
    except ImportError:
        arrow = False
    sys.path.insert(0, str(ROOT))
    from cxr_embed.io.manifest import load_manifest

    path = SHARED / "label_tables" / TABLES[table]
    gc.collect()
    out = {"table": table, "pyarrow": arrow, "pandas": pd.__version__}
    if trace:
        import tracemalloc
        tracemalloc.start()
    baseline = _status("VmHWM")
    cpu, wall = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_manifest(path, check_files=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if trace:
        out["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / MIB, 1)
        tracemalloc.stop()
        out["result_mib"] = round(df.memory_usage(deep=True).sum() / MIB, 1)
        out["shape"] = list(df.shape)
        out["label_dtypes"] = sorted({str(df[c].dtype) for c in df.attrs["labels"]})
    else:
        peak = _status("VmHWM")
        out.update(cpu_s=round(cpu, 2), wall_s=round(wall, 2), baseline_rss_mib=round(baseline / MIB, 1),
                   peak_rss_mib=round(peak / MIB, 1), growth_mib=round((peak - baseline) / MIB, 1))
    return out


def _run(table: str, trace: bool, no_pyarrow: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", table] + (["--trace"] if trace else []) + \
          (["--no-pyarrow"] if no_pyarrow else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{table}: child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default=",".join(TABLES), help="comma-separated among " + ", ".join(TABLES))
    ap.add_argument("--no-pyarrow", action="store_true", help="hide pyarrow from the measured processes")
    ap.add_argument("--repeats", type=int, default=1, help="plain runs per table (fresh processes): least CPU and "
                    "wall time, largest RSS growth")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.trace, args.no_pyarrow)))
        return
    names = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        raise SystemExit(f"unknown table(s) {unknown}; choose among {list(TABLES)}")
    missing = [TABLES[t] for t in names if not (SHARED / "label_tables" / TABLES[t]).is_file()]
    if missing:
        raise SystemExit(f"{SHARED / 'label_tables'}: missing {missing}")
    results = []
    for t in names:
        runs = [_run(t, False, args.no_pyarrow) for _ in range(args.repeats)]
        row = max(runs, key=lambda r: r["growth_mib"])  # memory: the worst run; time: the least disturbed
        row.update(cpu_s=min(r["cpu_s"] for r in runs), wall_s=min(r["wall_s"] for r in runs), repeats=len(runs))
        row.update({k: v for k, v in _run(t, True, args.no_pyarrow).items() if k not in row})
        results.append(row)
        print(f"{t}: {row['cpu_s']} s CPU, +{row['growth_mib']} MiB RSS, tracemalloc {row['tracemalloc_peak_mib']} "
              f"MiB", file=sys.stderr)
    goals = {f"{r['table']}: cpu_s<10": r["cpu_s"] < 10 for r in results}
    goals.update({"padchest: growth_mib<400": r["growth_mib"] < 400 for r in results if r["table"] == "padchest"})
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                      "tables": results, "goals": goals}, indent=1))


if __name__ == "__main__":
    main()
