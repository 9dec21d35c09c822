#!/usr/bin/env bash
# GPU check of extraction on real radiographs; prints one JSON object on stdout.
#
# Fits one call of under eight minutes on a 16-core GPU machine, installs nothing beyond the
# project's own `make install`. Runs `extract` with mixed precision and XLA (Backbone precision
# "auto" on a GPU) on the 64 real 1024 px NIH PNGs (repeated to --n images) and on pydicom-data's
# uncompressed CR DICOMs, with 1, 4 and 15 decoding workers, and reports model-only vs end-to-end
# images/s and the GPU utilisation sampled by nvidia-smi during each run.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (after `make install`)
#   bash bench/gpu_check.sh --dry-run       # CPU only, tiny: checks the script's own parts
#
# Exits quickly with {"error": ...} when TensorFlow (or a GPU, unless --dry-run) is missing.
# Options: --n N (images per run, default 1024), --workers "1 4 15", --backbones "efficientnet_lite0 densenet121",
#          --python PATH (default .venv/bin/python, else python3), --time-limit S (default 420).
set -u
cd "$(dirname "$0")/.."
N=1024; WORKERS="1 4 15"; BACKBONES="efficientnet_lite0 densenet121"; DRY=0; LIMIT=420
PY=".venv/bin/python"; [ -x "$PY" ] || PY="$(command -v python3)"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; N=48; WORKERS="0 1 2"; BACKBONES="efficientnet_lite0"; LIMIT=300 ;;
    --n) N="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --backbones) BACKBONES="$2"; shift ;;
    --python) PY="$2"; shift ;;
    --time-limit) LIMIT="$2"; shift ;;
    *) echo "{\"error\": \"unknown option $1\"}"; exit 2 ;;
  esac
  shift
done
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import tensorflow" >/dev/null 2>&1; then
  echo "{\"error\": \"TensorFlow is not importable with $PY; fix: run 'make install' (or pass --python)\"}"
  exit 3
fi
if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo '{"error": "nvidia-smi not found: not a GPU machine; fix: run on the GPU machine, or pass --dry-run"}'
  exit 4
fi

SMI_LOG="$(mktemp)"; trap 'rm -f "$SMI_LOG"; [ -n "${SMI_PID:-}" ] && kill "$SMI_PID" 2>/dev/null' EXIT
if [ "$DRY" = 0 ]; then
  # one line per 200 ms: epoch ms, utilisation %, memory used MiB
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    | while IFS= read -r line; do echo "$(date +%s%3N), $line"; done > "$SMI_LOG" &
  SMI_PID=$!
fi

timeout "$LIMIT" "$PY" - "$N" "$WORKERS" "$BACKBONES" "$DRY" "$SMI_LOG" <<'EOF'
import glob, json, os, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np

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
EOF
rc=$?
if [ $rc = 124 ]; then echo "{\"error\": \"time limit of ${LIMIT} s reached; fix: pass a smaller --n\"}"; fi
exit $rc
