#!/usr/bin/env bash
# The GPU benchmarks, in one go, on one CUDA GPU (H100/H200 class): training speed against the reference,
# the headline accuracy table on the `small` preset, and the serving table on onnxruntime-gpu when it
# can be installed. Results land in bench/results/ named after the GPU.
#
#   PYTHON=/path/to/python bench/gpu.sh          # an environment with a CUDA build of torch (2.4-2.13)
#
# The project's other dependencies are installed into that environment (torch is left as it is).
# Each step's log goes to bench/results/logs/; a failing step does not stop the next ones.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOGS=bench/results/logs
mkdir -p "$LOGS"

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')" || exit 1
"$PYTHON" -m pip install --quiet -e ".[train,serve,bench]" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"

status=0
run() {  # run NAME COMMAND...: log to $LOGS/NAME.log, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" > "$LOGS/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s"
    else
        echo "   FAILED after $((SECONDS - start)) s (see $LOGS/$name.log)"; status=1
    fi
    tail -n 25 "$LOGS/$name.log"
}

# 1. Training images/s, ours (fp32 channels_last, NCHW, bf16) against neuralpredictors' pipeline.
run train_speed "$PYTHON" bench/train_speed.py --device cuda --steps 20 --warmup 3
# 2. The model table on `small` (both tracks, 5-member ensembles, reference CNN), bf16 autocast.
run accuracy "$PYTHON" bench/accuracy.py --device cuda --amp
# 3. Serving: ORT on the GPU when onnxruntime-gpu installs (it replaces the CPU build), else on CPU.
if "$PYTHON" -m pip install --quiet "onnxruntime-gpu>=1.20,<2" 2>/dev/null; then
    "$PYTHON" -m pip uninstall --quiet --yes onnxruntime || true
    "$PYTHON" -m pip install --quiet --force-reinstall --no-deps "onnxruntime-gpu>=1.20,<2"
fi
"$PYTHON" -c "import onnxruntime as o; print('onnxruntime providers:', o.get_available_providers())" | tee "$LOGS/ort.txt"
run serving "$PYTHON" bench/serving.py
exit $status
