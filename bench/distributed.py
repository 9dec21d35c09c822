"""Benchmark of extract(engine="ray") against engine="local"; prints one JSON object on stdout.

On synthetic grayscale radiographs written as PNG to a temporary folder (those of bench/extract.py),
interleaved ``--repeats`` times (best kept, since other jobs share the machine):

- ``local``: :func:`cxr_embed.extract` with the local engine (default workers);
- ``ray``: the same with ``engine="ray"`` on a Ray instance started once, before the runs, on this
  machine (``ray.init``; its start-up is reported separately as ``ray_start_seconds``, since on a
  cluster it is paid once, not per run). Each run still pays the start of its embedding actor(s)
  (importing TensorFlow and building the backbone), as it would on a cluster;
- ``ratio_ray_to_local``: goal >= 0.7 (the Ray overhead on one machine);
- ``ray_steady_images_per_second``: images/s from the first committed batch to the end (the rate
  once the actors are up, what a long run on a cluster sees);
- ``bits_equal``: the two stores hold the same bits for every image.

With a GPU, the actors take one GPU each and ``--decode-cpus``/``--workers`` set the decoding tasks.

Usage::

    python bench/distributed.py                  # 1,000 images of 512 px, Lite0 at 224, 1 repeat
    python bench/distributed.py --n 200 --repeats 2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from extract import make_backbone, write_png  # noqa: E402  (bench/extract.py, beside this file)


def _ray_run(paths, bb, store, args) -> dict:
    import cxr_embed
    from cxr_embed.embed import distributed

    add, first = distributed._Committer.add, []

    def timed_add(self, batch):  # instrument: when the first batch reaches the driver
        n = add(self, batch)
        if not first:
            first.append((time.perf_counter(), n))
        return n

    distributed._Committer.add = timed_add
    try:
        t0 = time.perf_counter()
        options = {"decode_cpus": args.decode_cpus, "actor_cpus": args.actor_cpus}
        if args.actors:
            options["actors"] = args.actors
        r = cxr_embed.extract(paths, bb, store, batch_size=args.batch_size, workers=args.workers, progress=False,
                              engine="ray", ray_options=options)
        t1 = time.perf_counter()
    finally:
        distributed._Committer.add = add
    assert r.n_done == len(paths) and r.n_failed == 0, str(r)
    out = {"images_per_second": round(r.images_per_second, 2), "seconds": round(r.seconds, 2)}
    if first:
        out["first_batch_seconds"] = round(first[0][0] - t0, 2)
        rest = len(paths) - first[0][1]
        out["steady_images_per_second"] = round(rest / (t1 - first[0][0]), 2) if rest and t1 > first[0][0] else None
    return out


def _local_run(paths, bb, store, args) -> dict:
    import cxr_embed

    r = cxr_embed.extract(paths, bb, store, batch_size=args.batch_size, workers=args.workers, progress=False)
    assert r.n_done == len(paths) and r.n_failed == 0, str(r)
    return {"images_per_second": round(r.images_per_second, 2), "seconds": round(r.seconds, 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images")
    p.add_argument("--repeats", type=int, default=1, help="interleaved local/ray runs (best kept)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None,
                   help="local: decoding workers; ray: decoding tasks at once (default: each engine's choice)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--actors", type=int, default=None, help="embedding actors (default: one per GPU, else 1)")
    p.add_argument("--actor-cpus", type=float, default=1.0)
    p.add_argument("--decode-cpus", type=float, default=1.0)
    p.add_argument("--object-store-mb", type=int, default=512, help="object store of the local Ray instance")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np
    import ray

    import cxr_embed

    out: dict = {"n": args.n, "image_size": args.image_size, "input_size": args.input_size,
                 "batch_size": args.batch_size, "backbone": args.backbone, "repeats": args.repeats,
                 "cpu_count": os.cpu_count(), "ray": ray.__version__, "cxr_embed": cxr_embed.__version__}
    with tempfile.TemporaryDirectory(prefix="cxr_embed_bench_ray_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = write_png(tmp / "png", args.n, args.image_size)
        out["write_seconds"] = round(time.perf_counter() - t, 2)
        bb, note = make_backbone(args.backbone, args.input_size)
        if note:
            out["note"] = note
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=args.object_store_mb << 20)
        out["ray_start_seconds"] = round(time.perf_counter() - t, 2)
        out["cluster"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        runs: dict[str, list[dict]] = {"local": [], "ray": []}
        try:
            for rep in range(args.repeats):
                runs["local"].append(_local_run(paths, bb, tmp / f"local{rep}.h5", args))
                runs["ray"].append(_ray_run(paths, bb, tmp / f"ray{rep}.h5", args))
        finally:
            ray.shutdown()
        a = cxr_embed.EmbeddingStore(tmp / "local0.h5").load(bb, paths)[1]
        b = cxr_embed.EmbeddingStore(tmp / "ray0.h5").load(bb, paths)[1]
        out["bits_equal"] = bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
    best_local = max(r["images_per_second"] for r in runs["local"])
    best_ray = max(r["images_per_second"] for r in runs["ray"])
    steady = [r.get("steady_images_per_second") for r in runs["ray"] if r.get("steady_images_per_second")]
    out.update({
        "local_images_per_second": best_local, "ray_images_per_second": best_ray,
        "ray_steady_images_per_second": max(steady) if steady else None,
        "ratio_ray_to_local": round(best_ray / best_local, 3) if best_local else None,
        "runs": runs,
    })
    out["goals"] = {"ratio_ray_to_local>=0.7": bool(out["ratio_ray_to_local"] and out["ratio_ray_to_local"] >= 0.7),
                    "bits_equal": out["bits_equal"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
