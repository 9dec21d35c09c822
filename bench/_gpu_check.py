"""Python part of bench/gpu_check.sh (a file: spawned decoding workers re-import the main module)."""
import glob, json, os, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np


def main():
    n, workers, backbones, dry, smi_log = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split(), sys.argv[4] == "1", sys.argv[5]
    warnings.simplefilter("ignore")
    import pandas as pd
    import tensorflow as tf

    import cxr_embed
    from pydicom.data import get_testdata_file

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not dry:
        print(json.dumps({"error": "TensorFlow sees no GPU (CUDA libraries missing?); fix: pip install -e '.[gpu]'"}))
        sys.exit(5)
    shared = Path(os.environ.get("CXR_EMBED_SHARED_DATA", Path.cwd().parent / "shared" / "data"))
    pngs = sorted(glob.glob(str(shared / "nih_cxr14_1024_sample" / "images" / "*.png")))
    dicoms = [p for p in (get_testdata_file(f, download=False) for f in ("RG1_UNCR.dcm", "RG3_UNCR.dcm")) if p]
    if not pngs:
        print(json.dumps({"error": f"no NIH PNGs under {shared}; fix: set CXR_EMBED_SHARED_DATA"}))
        sys.exit(6)


    def gpu_util(t0, t1):
        try:
            rows = [line.split(",") for line in open(smi_log) if line.strip()]
            vals = [float(r[2]) for r in rows if t0 * 1000 <= float(r[0]) <= t1 * 1000]
        except (OSError, ValueError, IndexError):
            return None
        return {"mean": round(float(np.mean(vals)), 1), "max": max(vals), "samples": len(vals)} if vals else None


    out = {"gpus": [g.name for g in gpus], "cpu_count": os.cpu_count(), "n": n, "dry_run": dry,
           "tensorflow": tf.__version__, "cxr_embed": cxr_embed.__version__, "backbones": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in backbones:
            try:
                bb = cxr_embed.Backbone(name)
            except Exception:  # noqa: BLE001 - no internet for Keras' DenseNet weights: same speed
                bb = cxr_embed.Backbone(name, weights=None)
            bs = 64 if gpus else 16
            x = np.random.default_rng(0).random((bs, *bb.input_size, 3), dtype=np.float32) * 255
            bb.embed(x, batch_size=bs)  # compile (XLA) and warm up
            t0 = time.time(); k = max(2, n // bs)
            for _ in range(k):
                bb.embed(x, batch_size=bs)
            t1 = time.time()
            row = {"compute": bb.compute, "batch_size": bs,
                   "model_only_images_per_second": round(k * bs / (t1 - t0), 1), "model_only_gpu_util": gpu_util(t0, t1)}
            for kind, files in (("png", pngs), ("dicom", dicoms)):
                paths = (files * (n // len(files) + 1))[:n] if kind == "png" else (files * 64)[: max(8, n // 8)]
                for w in workers:
                    df = pd.DataFrame({"image_id": [f"{i}" for i in range(len(paths))], "path": paths})
                    t0 = time.time()
                    r = cxr_embed.extract(df, bb, Path(tmp) / f"{name}-{kind}-{w}.h5", batch_size=bs, workers=int(w),
                                          progress=False)
                    t1 = time.time()
                    row[f"extract_{kind}_workers{w}"] = {
                        "images_per_second": round(r.images_per_second, 1), "n": r.n_done, "failed": r.n_failed,
                        "ratio_to_model": round(r.images_per_second / row["model_only_images_per_second"], 3),
                        "gpu_util": gpu_util(t0, t1)}
            out["backbones"][name] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
