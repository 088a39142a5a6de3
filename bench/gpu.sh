#!/usr/bin/env bash
# The GPU benchmarks, in one go, on one CUDA GPU (H100/H200 class): training speed against the reference,
# the headline accuracy table on the `small` preset, and the serving table on onnxruntime-gpu when it
# can be installed. Results land in bench/results/ named after the GPU.
#
#   PYTHON=/path/to/python bench/gpu.sh          # an environment with a CUDA build of torch (2.4-2.13)
#
# Settings (environment):
#   INSTALL=0        the environment already has the project's dependencies (default: pip install them;
#                    torch is left as it is)
#   STEPS="..."      which of train_speed core_form core_form_truth accuracy ablation serving to run
#                    (default: train_speed accuracy serving; `ablation` is the twin rows without one
#                    ingredient each, on `small`; `core_form` one model per core variant and seed on
#                    `small`'s image-only recording; `core_form_truth` the TRUTH_VARIANTS trained on its
#                    neurons' noise-free responses: what each core expresses without the trials' noise)
#   TRUTH_VARIANTS   the core_form_truth step's variants (default: cnn, twin, twin 128 wide, twin with the
#                    baseline's core; seed 0, 200-epoch cap)
#   VARIANTS="a;b"   the core_form step's variants (bench/core_form.py --variant, ';'-separated; default:
#                    cnn, twin, and twin without divisive normalization, without the correlation loss,
#                    with it until the first learning-rate decay only, with the baseline's core, 128 wide,
#                    with free readout positions instead of the map from cortical coordinates, with
#                    the map plus penalized per-neuron offsets, twin and twin with offsets with their
#                    readout positions held the first two epochs, and twin with offsets whose positions
#                    learn at a tenth of the learning rate)
#   SEEDS=0,1        the core_form step's seeds (default 0,1)
#   RESULTS=DIR      where results and logs go (default bench/results)
#   JOBS=N           accuracy cells trained at once (default 4; ensemble members also train in parallel)
#   LIMIT_<STEP>=S   stop a step after S seconds (e.g. LIMIT_ACCURACY=600); the accuracy file keeps the
#                    cells finished by then
#   ABLATIONS=a,b    the ablation step's rows (bench/accuracy.py --ablation names; default all)
#   RESUME=1         the accuracy step continues its result file (bench/accuracy.py --resume: finished
#                    cells are kept, the rest trained), copied from bench/results/ when RESULTS is elsewhere
#   WORK=DIR         keep the simulated preset and the accuracy and ablation steps' trainings in DIR
#                    (default: a temporary folder, removed at the end): a later run on the same machine
#                    simulates nothing again, reuses finished trainings and continues from their last
#                    checkpoints those a stopped step left (with RESUME=1 the table goes on too)
#   MPS=1            run the steps under CUDA MPS (started here, stopped at the end), so that the
#                    accuracy step's processes share the GPU at once instead of taking turns
#   ORT_GPU_WHEEL=F  install onnxruntime-gpu from this wheel file instead of the package index (1.31 is
#                    built for CUDA 13: the nvidia-* libraries it declares are those a CUDA 13 torch has)
# The `small` preset is simulated once and shared by the steps. Each step's log goes to RESULTS/logs/;
# a failing step does not stop the next ones.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/results}
STEPS=${STEPS:-train_speed accuracy serving}
JOBS=${JOBS:-4}
LOGS=$RESULTS/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')" || exit 1
if [[ ${INSTALL:-1} != 0 ]]; then
    "$PYTHON" -m pip install --quiet -e ".[train,serve,bench]" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
# The GPU's utilization and memory every 5 s while the steps run: whether a step kept the GPU busy.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$LOGS/gpu-utilization.csv" &
sampler=$!

status=0
run() {  # run NAME COMMAND...: log to $LOGS/NAME.log, stop it after LIMIT_<NAME> s, remember a failure, go on
    local name=$1; shift
    local limit_var="LIMIT_${name^^}"
    local limit=${!limit_var:-0}
    echo "== $name: $*"
    local start=$SECONDS
    if timeout --signal=INT --kill-after=120 "$limit" "$@" > "$LOGS/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s"
    else
        echo "   FAILED or stopped after $((SECONDS - start)) s (see $LOGS/$name.log)"; status=1
    fi
    tail -n 25 "$LOGS/$name.log"
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

scratch=$(mktemp -d)
work=${WORK:-$scratch}
mkdir -p "$work" && work=$(cd "$work" && pwd)
data=$work/small
mps=0
cleanup() {
    kill "$sampler" 2> /dev/null
    if [[ $mps == 1 ]]; then echo quit | nvidia-cuda-mps-control; fi
    rm -rf "$scratch"
}
trap cleanup EXIT
# CUDA MPS lets the accuracy step's processes run kernels at the same time instead of taking turns
# (small models are launch-bound: one process leaves most of a large GPU idle).
if [[ ${MPS:-0} == 1 ]] && command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=$scratch/mps-pipe CUDA_MPS_LOG_DIRECTORY=$scratch/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d; then
        mps=1
        echo "CUDA MPS: on"
    else
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        echo "CUDA MPS: could not start; going on without it"
    fi
fi
if [[ -f $data/simulation.json ]]; then
    echo "== simulate: $data already holds the preset"
elif wants train_speed || wants core_form || wants core_form_truth || wants accuracy || wants ablation; then
    run simulate "$PYTHON" -m twin.cli simulate --preset small --out "$data" --quiet
fi
# 1. Training images/s, ours (fp32 channels_last, NCHW, bf16) against neuralpredictors' pipeline.
if wants train_speed; then
    run train_speed "$PYTHON" bench/train_speed.py --device cuda --steps 20 --warmup 3 --data "$data" \
        --out "$RESULTS/train_speed-small-$gpu.json"
fi
# 1b. Which core: one model per variant and seed on the image-only recording, trained to its early stop;
#     minutes, where the table below pre-trains and ensembles whatever `twin` is.
if wants core_form; then
    IFS=';' read -ra specs <<< "${VARIANTS:-cnn;twin;twin:normalization=false;twin:correlation_weight=0;twin:correlation_rounds=1;twin:kind=cnn,layers=4,hidden_kernel=7,depthwise=true,dropout=0;twin:channels=128;twin:use_coordinates=false;twin:offset_weight=10;twin:position_warmup=2;twin:offset_weight=10,position_warmup=2;twin:offset_weight=10,position_lr_scale=0.1}"
    variants=()
    for spec in "${specs[@]}"; do variants+=(--variant "$spec"); done
    run core_form "$PYTHON" bench/core_form.py --device cuda --amp --jobs "$JOBS" --seeds "${SEEDS:-0,1}" \
        --data "$(ls -d "$data"/static90001-*)" --work "$work/core_form" "${variants[@]}" \
        --out "$RESULTS/core_form-90001-1-1-$gpu.json"
fi
# 1c. The same bench on the noise-free responses (bench/README.md, "Trained on the truth").
if wants core_form_truth; then
    IFS=';' read -ra specs <<< "${TRUTH_VARIANTS:-cnn;twin;twin:channels=128;twin:kind=cnn,layers=4,hidden_kernel=7,depthwise=true,dropout=0}"
    variants=()
    for spec in "${specs[@]}"; do variants+=(--variant "$spec"); done
    run core_form_truth "$PYTHON" bench/core_form.py --device cuda --amp --jobs "$JOBS" --seeds 0 \
        --targets truth --data "$(ls -d "$data"/static90001-*)" --work "$work/core_form" "${variants[@]}" \
        --out "$RESULTS/core_form-90001-1-1-$gpu-truth.json"
fi
# 2. The model table on `small` (both tracks, 5-member ensembles, reference CNN), bf16 autocast; the
#    single-model row is the ensemble members' own scores, averaged (3 fewer trainings).
if wants accuracy; then
    resume=()
    if [[ ${RESUME:-0} == 1 ]]; then
        resume=(--resume)
        if [[ ! -f $RESULTS/accuracy-small-$gpu.json && -f bench/results/accuracy-small-$gpu.json ]]; then
            cp "bench/results/accuracy-small-$gpu.json" "$RESULTS/"
        fi
    fi
    run accuracy "$PYTHON" bench/accuracy.py --device cuda --amp --jobs "$JOBS" --single-from-ensemble --data "$data" \
        --work "$work/accuracy" --out "$RESULTS/accuracy-small-$gpu.json" "${resume[@]}"
fi
# 2b. What each of twin's ingredients buys on `small`: one model per row, each without one ingredient,
#     beside the full ensemble (whose members' spread is the noise a difference has to exceed) and the
#     full model trained alone as they are (not the members' mean: members train on less of the train tier).
if wants ablation; then
    run ablation "$PYTHON" bench/accuracy.py --device cuda --amp --jobs "$JOBS" --rows twin,ensemble \
        --ablation "${ABLATIONS:-all}" --data "$data" --work "$work/accuracy" \
        --out "$RESULTS/accuracy-small-ablation-$gpu.json"
fi
# 3. Serving: ORT on the GPU when onnxruntime-gpu installs (it replaces the CPU build), else on CPU.
if wants serving; then
    if [[ -n ${ORT_GPU_WHEEL:-} ]]; then  # a wheel file at hand (no package index needed)
        "$PYTHON" -m pip uninstall --quiet --yes onnxruntime || true
        "$PYTHON" -m pip install --quiet --no-index --no-deps --force-reinstall "$ORT_GPU_WHEEL" || status=1
    elif [[ ${INSTALL:-1} != 0 ]] && "$PYTHON" -m pip install --quiet "onnxruntime-gpu>=1.20,<2" 2>/dev/null; then
        "$PYTHON" -m pip uninstall --quiet --yes onnxruntime || true
        "$PYTHON" -m pip install --quiet --force-reinstall --no-deps "onnxruntime-gpu>=1.20,<2"
    fi
    "$PYTHON" -c "import onnxruntime as o; print('onnxruntime providers:', o.get_available_providers())" \
        | tee "$LOGS/ort.txt"
    run serving "$PYTHON" bench/serving.py --out "$RESULTS/serving-$gpu.json"
fi
exit $status
