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

timeout "$LIMIT" "$PY" bench/_gpu_check.py "$N" "$WORKERS" "$BACKBONES" "$DRY" "$SMI_LOG"
rc=$?
if [ $rc = 124 ]; then echo "{\"error\": \"time limit of ${LIMIT} s reached; fix: pass a smaller --n\"}"; fi
exit $rc
