#!/usr/bin/env bash
# Issue 26 on one GPU machine of the device tool, in four back-to-back calls on one warm machine
# (ignored paths such as .site/ and runs/ stay there between calls; a machine idle for 30 s is
# given back, so each call follows the last at once). Wheels come from `bash bench/device_stage.sh
# pack`, run here first.
#
#   call 1  carry [".whl/p1"]                bash bench/device_gpu_node.sh 1   PyAV + PyNvVideoCodec;
#           nvdec_gpu.py (fps vs sessions, lanes); then the 1-h corpus starts in the background
#   call 2  carry [".whl/p2"]                bash bench/device_gpu_node.sh 2   first piece of the rest
#   call 3  carry [".whl/p3"]                bash bench/device_gpu_node.sh 3   Ray, DuckDB, open_clip, OCR, ...;
#           the lane's GPU tests; waits for the corpus; `reelsift run` with decode_lane=cpu
#   call 4  no carry                         bash bench/device_gpu_node.sh 4   the same run, decode_lane=auto
#
# Results (JSON, logs) are copied flat into $OUT after every step; the GPU-node JSON collects both
# runs in runs/gpu_node/results/ on the machine, so call 4's copy holds cpu and auto side by side.
# CORPUS_HOURS (default 1.0) and RUN_BUDGET_S (default 360) size the runs to the device time left;
# BOTH=1 makes call 3 run both modes (then call 4 is not needed).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_out}
mkdir -p "$OUT" runs/gpu_node/results
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
RUN_BUDGET_S=${RUN_BUDGET_S:-360}
CORPUS_HOURS=${CORPUS_HOURS:-1.0}
step=${1:?usage: device_gpu_node.sh 1..4}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
nproc | tee -a "$OUT/card.txt"

case $step in
1)
    bash bench/device_stage.sh install p1 2>&1 | tail -3
    # the lane's GPU tests (the CLIP-score one skips until call 3 brings open_clip)
    timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decode_lanes.py -rs \
        >"$OUT/gpu_tests_p1.log" 2>&1
    echo "gpu tests exit $?"; tail -8 "$OUT/gpu_tests_p1.log"
    timeout $((${NVDEC_BUDGET_S:-100} + 50)) python3 bench/nvdec_gpu.py --out "$OUT" --files 32 --clips 320 --budget-s "${NVDEC_BUDGET_S:-100}" \
        >"$OUT/nvdec_gpu.log" 2>&1
    echo "nvdec_gpu exit $?"; tail -40 "$OUT/nvdec_gpu.log"
    [ "$CORPUS_HOURS" = 0 ] || (setsid nohup python3 bench/gpu_node.py corpus --out runs/gpu_node/corpus --hours "$CORPUS_HOURS" >runs/corpus.log 2>&1 &)
    ;;
2)
    bash bench/device_stage.sh install p2
    tail -3 runs/corpus.log
    ;;
3)
    bash bench/device_stage.sh install p3 2>&1 | tail -3
    python3 -c "import ray, duckdb, open_clip; print('ray', ray.__version__)"
    timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decode_lanes.py \
        >"$OUT/gpu_tests.log" 2>&1
    echo "gpu tests exit $?"; tail -15 "$OUT/gpu_tests.log"
    for _ in $(seq 120); do [ -f runs/gpu_node/corpus/corpus.json ] && break; sleep 2; done
    cat runs/gpu_node/corpus/corpus.json || { tail -20 runs/corpus.log; exit 1; }
    ;;&
3 | 4)
    # BOTH=1: call 3 runs cpu and then auto (a short device budget: the issue's "both in one call")
    modes=$([ "$step" = 4 ] && echo auto || { [ "${BOTH:-0}" = 1 ] && echo "cpu auto" || echo cpu; })
    for mode in $modes; do
        python3 bench/gpu_node.py run --decode "$mode" --out runs/gpu_node/results --budget-s "$RUN_BUDGET_S" \
            2>&1 | tail -30
        cp runs/gpu_node/results/*.json "runs/gpu_node/run-$mode.log" "$OUT"/ 2>/dev/null
        tail -60 "runs/gpu_node/run-$mode.log" >"$OUT/run-$mode.tail.txt" 2>/dev/null
    done
    ;;
*)
    echo "usage: device_gpu_node.sh 1..4" >&2; exit 2 ;;
esac
ls "$OUT"
