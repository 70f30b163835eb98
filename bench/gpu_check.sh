#!/usr/bin/env bash
# The checks a machine with a GPU runs in one go, each step under its own time limit (about 9 minutes in all):
#   1. the tests that train and serve on the device (TEST_DEVICE), and, beside them, the simulator benchmark's
#      device path end to end on the tiny preset (bench.simulate --verdict-only);
#   2. alone on the machine, so that its timings are its own: bench.tiling with a whole-frame model at a
#      GPU-sized input (--frame-imgsz) against the tile model on the same frames, same epochs, batch and
#      gradient steps (the comparison a lab with a GPU would make; README, Results, Large images).
#
#   bash bench/gpu_check.sh                      # outputs in .work/gpu-check, device cuda
#   OUT=dir DEVICE=cpu SMALL=1 bash bench/gpu_check.sh   # a dry run of the script on a CPU machine
#
# Each step writes its output to a file in $OUT and the script goes on when one fails or runs out of time; the
# last line of each file is "rc=N" (124: out of time). Nothing is downloaded: YOLO trains from its yaml.
#
# On a machine with torch but no package registry, put the rest on PYTHONPATH from wheels downloaded elsewhere
# for its Python (pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux...):
# the pins of requirements.txt for ultralytics (with ultralytics-thop, ultralytics-platform and polars; a 1.x
# polars wheel is a third the size of 2.x and does), fastapi, starlette, uvicorn, pydantic (pydantic-core,
# annotated-types, typing-inspection), faster-coco-eval, cleanlab (termcolor), opentelemetry-api, and
# label-studio-sdk with those of its dependencies the machine lacks (the backend's tests import it; without it
# four tests of tests/test_backend_process.py fail with "No module named 'label_studio_sdk'").
set -u
OUT=${OUT:-.work/gpu-check}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
WORK=${WORK:-$PWD/.work}
mkdir -p "$OUT" "$WORK"
export YOLO_CONFIG_DIR="$WORK/yolo-config" MPLCONFIGDIR="$WORK/mpl" PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

if [ -n "${SMALL:-}" ]; then  # the dry run's sizes: every step runs, nothing is measured
    TILING=(--n-train 1 --n-val 1 --n-test 1 --epochs 1 --imgsz 64 --frame-epochs 1 --frame-imgsz 96
            --memory 1 --memory-model 1 --threads 1)
    TESTS=(tests/test_bench_gpu.py)
else
    TILING=(--n-train 12 --n-val 2 --n-test 8 --tile 320 --imgsz 320 --epochs 30 --batch 16
            --frame-epochs 30 --frame-imgsz 1024 --memory 10 --memory-model 10)
    TESTS=(tests/test_model.py tests/test_backend_process.py tests/test_bench_gpu.py)
fi

step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, output and rc in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    { echo "\$ $*"; timeout "$limit" "$@"; echo "rc=$? after $((SECONDS - t0)) s"; } > "$OUT/$name.txt" 2>&1
}

{
    date -u +%FT%TZ
    git rev-parse --short HEAD 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    echo "cores: $(nproc)"
    "$PY" -c "import sys, torch, ultralytics; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'ultralytics', ultralytics.__version__)"
} > "$OUT/env.txt" 2>&1

# 1. The device tests and the tiny simulator benchmark, side by side.
TEST_DEVICE=$DEVICE step tests 200 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" &
step simulate-tiny 200 "$PY" -m bench.simulate --preset tiny --seed-list 0 --budget 0.1 --seed-fraction 0.04 \
    --verdict-only --device "$DEVICE" --out "$WORK/gpu-check-simulate-tiny" &
wait
cp "$WORK/gpu-check-simulate-tiny/results.md" "$OUT/simulate-tiny-results.md" 2>/dev/null

# 2. Tiles against a whole-frame model at a large input, alone on the machine.
step bench-tiling 330 "$PY" -m bench.tiling "${TILING[@]}" --device "$DEVICE" --out "$WORK/gpu-check-tiling"
cp "$WORK/gpu-check-tiling/report.json" "$OUT/bench-tiling-report.json" 2>/dev/null
tail -n 1 "$OUT"/*.txt
