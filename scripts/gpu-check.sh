#!/usr/bin/env bash
# The GPU path, measured, in one short run (under 8 minutes): the model's raw rate by size and
# batch (`hch model-bench`: presets tiny, medium and paper, batch 1 to 4096, fresh and cached
# encodings) and trees answered by a model worker against that rate (`hch loadtest --model`),
# printed as one Markdown table. It runs on whatever device libtorch gives: a GPU when the
# libtorch has CUDA and one is visible, else the CPU, where it measures fewer sizes and batches so
# as to end in minutes too.
#
#   scripts/gpu-check.sh                     build (release) and run here
#   scripts/gpu-check.sh --binary PATH/hch   run a binary built elsewhere (a GPU machine
#                                            without Rust: see below)
#   scripts/gpu-check.sh --fetch-cuda        first install torch 2.11.0 from PyPI (the CUDA
#                                            build, with its NVIDIA wheels: about 4 GB) into
#                                            .gpu-venv, and build against it
#
# Which libtorch the build links:
#   - LIBTORCH, if set;
#   - else a python3 whose torch is 2.11 built with CUDA (the PyPI wheel, as on our GPU
#     machines): LIBTORCH_USE_PYTORCH=1, so torch-sys takes that wheel's libtorch;
#   - else the CPU libtorch of `make setup` (.libtorch/).
# The build goes to target/gpu-check, so the default build's torch-sys is not rebuilt.
#
# A binary built against the CPU libtorch runs on a GPU too, given the CUDA wheel's libraries at
# run time: both come from the same PyPI wheel (torch 2.11.0), so they share one ABI. --binary
# points the loader at the torch of python3 and preloads libtorch_cuda.so, whose start-up
# registers CUDA with libtorch.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
binary=""
fetch=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$(realpath "${2:?--binary needs a path}"); shift 2 ;;
        --fetch-cuda) fetch=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
cd "$root"
started=$(date +%s)
log() { echo "gpu-check [$(( $(date +%s) - started ))s]: $*" >&2; }

python=${PYTHON:-python3}
# The lib/ directory of python's torch if it is 2.11 with CUDA, else nothing.
cuda_torch_lib() {
    "$python" - <<'EOF' 2>/dev/null || true
import os, torch
if torch.__version__.startswith("2.11") and torch.version.cuda:
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
EOF
}

if [ "$fetch" = 1 ]; then
    if [ ! -x .gpu-venv/bin/python ]; then
        log "installing torch 2.11.0 (CUDA) from PyPI into .gpu-venv"
        python3 -m venv .gpu-venv
        .gpu-venv/bin/pip install --quiet --disable-pip-version-check torch==2.11.0
    fi
    python=$root/.gpu-venv/bin/python
fi
torch_lib=$(cuda_torch_lib)

if [ -z "$binary" ]; then
    export CARGO_TARGET_DIR=$root/target/gpu-check
    if [ -n "${LIBTORCH:-}" ]; then
        log "building against LIBTORCH=$LIBTORCH"
    elif [ -n "$torch_lib" ]; then
        log "building against the CUDA libtorch of $("$python" -c 'import torch; print(torch.__file__)')"
        # torch-sys asks the python3 on PATH (python in a virtualenv) where its torch is.
        export LIBTORCH_USE_PYTORCH=1 PATH="$(dirname "$(command -v "$python")"):$PATH"
        unset VIRTUAL_ENV
    else
        log "no CUDA torch 2.11 found: building against the CPU libtorch (make setup)"
        make --no-print-directory setup >&2
    fi
    cargo build --release --quiet --bin hch
    binary=$CARGO_TARGET_DIR/release/hch
fi
# How hch is started: with --binary and a CUDA torch, against that torch's libraries (for hch
# alone: every other program here would load them too).
launch=(env)
if [ "$binary" != "${CARGO_TARGET_DIR:-}/release/hch" ] && [ -n "$torch_lib" ] \
        && [ -f "$torch_lib/libtorch_cuda.so" ]; then
    log "running $binary with the CUDA libtorch in $torch_lib"
    launch+=("LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    launch+=("LD_PRELOAD=$torch_lib/libtorch_cuda.so${LD_PRELOAD:+ $LD_PRELOAD}")
fi
[ -x "$binary" ] || { echo "gpu-check: no binary at $binary" >&2; exit 1; }

card=""
if command -v nvidia-smi > /dev/null; then
    card=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Which device the model lands on decides how much to measure.
"${launch[@]}" "$binary" model-bench --presets tiny --batches 1 --seconds 0.01 > "$out/probe" 2>&1 \
    || { cat "$out/probe" >&2; exit 1; }
if grep -q "device Cuda" "$out/probe"; then
    device="GPU ${card:-(nvidia-smi unavailable)}"
    presets=tiny,medium,paper
    batches=1,4,16,64,256,1024,4096
    loads=(tiny medium paper)
else
    device="CPU ($(nproc) cores)"
    presets=tiny,medium
    batches=1,16,256
    loads=(tiny medium)
fi
log "device: $device"

log "model-bench: presets $presets, batches $batches"
timeout 200 "${launch[@]}" "$binary" model-bench --presets "$presets" --batches "$batches" --seconds 0.3 \
    > "$out/bench" 2> "$out/bench.err" || { cat "$out/bench" "$out/bench.err" >&2; exit 1; }

for preset in "${loads[@]}"; do
    log "loadtest: model workers, $preset"
    timeout 90 "${launch[@]}" "$binary" loadtest --model "$preset" --seconds 4 > "$out/load-$preset" 2>&1 \
        || { cat "$out/load-$preset" >&2; exit 1; }
done

# The loadtest's figure after a label: the first number on that line.
figure() { grep -m1 "^$2" "$1" | sed "s/^$2//" | awk '{print $1}'; }
latency() { grep -m1 "^tree latency:" "$1" | sed 's/^tree latency: *//; s/, max.*//'; }

echo
echo "## hch on $device"
echo
echo "$(grep -m1 '^model-bench:' "$out/bench")"
echo
grep '^|' "$out/bench"
echo
echo "Trees answered by one model worker (hch loadtest --model, wildcard hch:5, a fresh instance per tree):"
echo
echo "| preset | raw model best q/s | in trees subq/s | ratio | tree latency |"
echo "|---|---:|---:|---:|---|"
for preset in "${loads[@]}"; do
    f=$out/load-$preset
    echo "| $preset | $(figure "$f" 'raw model best:') | $(figure "$f" 'subquestions:') | $(figure "$f" 'ratio:') | $(latency "$f") |"
done
echo
log "done in $(( $(date +%s) - started )) s"
