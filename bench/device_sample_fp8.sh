#!/usr/bin/env bash
# One GPU call for issue 27 (whole-clip sampling latency, fp8 sampling and training), run from the
# repo root on the device machine with the wheels it lacks carried in .whl/p27/ (44.5 MB:
# torchao 0.17.0, the release built for torch 2.11; diffusers 0.42.1; av 19.0.2; all cp312):
#
#   bash bench/device_sample_fp8.sh              # all phases, ~7.5 min on an H100
#   SAMPLE_BUDGET_S=150 bash bench/device_sample_fp8.sh quick   # tests and sample only
#   bash bench/device_sample_fp8.sh train-long bf16   # 200 training steps of one precision (own
#   bash bench/device_sample_fp8.sh train-long fp8    # call, ~5 min each); the second call merges
#                                                     # the first's JSON if it is in bench/results/
#
# Phases, each bounded by `timeout` (a failed or cut phase does not stop the next one):
#   install  the carried wheels into /tmp/site                                      (limit  40 s)
#   tests    the GPU tests of the fast sampler and fp8 (tests/test_fast_sample.py)   (limit  70 s)
#   sample   bench/sample_clip_gpu.py: 480p bf16, 480p fp8, 720p bf16, 720p fp8, in that order; the
#            bench skips the cases its 250 s budget cannot fit (720p fp8 first, then
#            720p bf16)                                                               (limit 280 s)
#   train    bench/train_fp8_gpu.py: bf16 then fp8, 2b 480p-81f, each stopped after 45 s (its
#            compile is most of that): step times over ~10 steps, not a loss curve; `train-long P`
#            runs the 200 steps of precision P in a call of its own                  (limit 140 s)
# The limits add up to 530 s; the phases usually end sooner (~7.5 min in all).
# Everything lands flat in $OUT (at most 8 files come back): phases.txt, one log per phase, and the
# benches' JSON files (sample_clip_gpu_<card>.json, train_fp8_gpu_<card>.json).
set -u
OUT=${OUT:-bench/results/device_run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
MODE=${1:-all}

log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/phases.txt"; }

# phase NAME LIMIT_S CMD...: run CMD under a time limit, output to $OUT/NAME.log, never fail the script
phase() {
    local name=$1 limit=$2
    shift 2
    log "start $name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    log "end $name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
    tail -n 25 "$OUT/$name.log"
}

log "card: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -1)"
WHEELS=.whl/p27
[ -d .whl/p2/p27 ] && WHEELS=.whl/p2/p27  # bench/device_stage.sh pack puts them beside p2
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    phase install 40 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    # PyAV may come from bench/device_stage.sh's .site (same machine, issue 26's staging)
    [ -d .site ] && export PYTHONPATH=/tmp/site:$PWD/.site:$PWD
else
    log "no $WHEELS/*.whl carried: torchao, diffusers and av must already be installed"
    export PYTHONPATH=$PWD
fi
python3 -c "import torch, torchao, diffusers, av; print('torch', torch.__version__, 'torchao', torchao.__version__,
'diffusers', diffusers.__version__, 'av', av.__version__)" 2>&1 | tee -a "$OUT/phases.txt"

SAMPLE_BUDGET_S=${SAMPLE_BUDGET_S:-250}
if [ "$MODE" = all ] || [ "$MODE" = quick ]; then
    phase tests 70 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast_sample.py
    phase sample $((SAMPLE_BUDGET_S + 30)) python3 bench/sample_clip_gpu.py --out "$OUT" --sizes 480p 720p --fp8 \
        --budget-s "$SAMPLE_BUDGET_S"
fi
if [ "$MODE" = all ]; then
    phase train 140 python3 bench/train_fp8_gpu.py --out "$OUT" --steps 200 --budget-s 45 --chunk 5
elif [ "$MODE" = train-long ]; then
    phase train 540 python3 bench/train_fp8_gpu.py --out "$OUT" --steps 200 --budget-s 480 \
        --precisions "${2:-bf16}" --merge-from bench/results
elif [ "$MODE" != quick ]; then
    log "unknown mode $MODE: use all, quick or train-long"
fi
log "done"
