#!/usr/bin/env bash
# Provides libtorch for the tch crate without the PyTorch download site, which our machines cannot
# reach: a CPU-only libtorch (lib/ + include/) carved out of the PyPI torch wheel into .libtorch/.
#
#   scripts/setup-libtorch.sh         # idempotent: a second run does nothing
#
# What it takes from where (see shared/LIBTORCH.md for the measurements behind this):
#   torch wheel        -> include/, lib/libtorch_cpu.so, lib/libc10.so, lib/libgomp.so.1
#   nvidia-cuda-runtime, nvidia-cuda-cupti (the versions the torch wheel pins)
#                      -> lib/libcudart.so.13, lib/libcupti.so.13 (libtorch_cpu links them)
#   gcc                -> lib/libtorch.so, an empty stand-in: torch-sys always links -ltorch, and
#                         the wheel's libtorch.so only pulls in the 470 MB CUDA kernels.
# With no libtorch_cuda.so in lib/, torch-sys links no CUDA and everything runs on the CPU.
#
# For a CUDA build (GPU images), do not use this: point LIBTORCH at a full libtorch 2.11 (for
# example `pip install torch==2.11.0` and LIBTORCH_USE_PYTORCH=1); see README.md, "GPUs".
set -euo pipefail

TORCH_VERSION=2.11.0
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${HCH_LIBTORCH_DIR:-$root/.libtorch}
stamp="$dest/.complete-$TORCH_VERSION"

if [ -f "$stamp" ]; then
  exit 0
fi
case "$(uname -m)" in
  x86_64) ;;
  *) echo "setup-libtorch: only x86-64 Linux is supported by this script; set LIBTORCH to a libtorch $TORCH_VERSION instead" >&2; exit 1 ;;
esac
for tool in python3 unzip gcc; do
  command -v "$tool" >/dev/null || { echo "setup-libtorch: $tool is required" >&2; exit 1; }
done

echo "setup-libtorch: fetching torch $TORCH_VERSION from PyPI (about 530 MB, once)" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "$@"
}
fetch "torch==$TORCH_VERSION"
wheel=$(ls "$tmp"/torch-"$TORCH_VERSION"-*.whl)

# The CUDA runtime versions this torch build was linked against, from the wheel's own metadata.
toolkit=$(unzip -p "$wheel" "torch-$TORCH_VERSION.dist-info/METADATA" \
  | sed -n 's/^Requires-Dist: cuda-toolkit\[[^]]*\]==\([0-9.]*\).*/\1/p' | head -n1)
[ -n "$toolkit" ] || { echo "setup-libtorch: no cuda-toolkit pin in the torch wheel metadata" >&2; exit 1; }
fetch "cuda-toolkit==$toolkit"
pin() {
  unzip -p "$tmp"/cuda_toolkit-*.whl '*.dist-info/METADATA' \
    | sed -n "s/^Requires-Dist: $1==\([0-9.*]*\);.*extra == '$2'.*/\1/p" | head -n1
}
runtime=$(pin nvidia-cuda-runtime cudart)
cupti=$(pin nvidia-cuda-cupti cupti)
[ -n "$runtime" ] && [ -n "$cupti" ] || { echo "setup-libtorch: cannot read the CUDA runtime pins" >&2; exit 1; }
fetch "nvidia-cuda-runtime==$runtime" "nvidia-cuda-cupti==$cupti"

stage="$dest.partial"
rm -rf "$stage"
mkdir -p "$stage/lib"
unzip -q "$wheel" 'torch/include/*' torch/lib/libtorch_cpu.so torch/lib/libc10.so \
  torch/lib/libgomp.so.1 -d "$tmp/torch"
mv "$tmp/torch/torch/include" "$stage/include"
mv "$tmp/torch/torch/lib/"* "$stage/lib/"
unzip -q -j "$tmp"/nvidia_cuda_runtime-*.whl '*/lib/libcudart.so.*' -d "$stage/lib"
unzip -q -j "$tmp"/nvidia_cuda_cupti-*.whl '*/lib/libcupti.so.*' -d "$stage/lib"
echo '' | gcc -shared -x c - -o "$stage/lib/libtorch.so"
echo "torch $TORCH_VERSION (CPU-only carve-out of the PyPI wheel; CUDA runtime $runtime)" > "$stage/VERSION"

rm -rf "$dest"
mv "$stage" "$dest"
touch "$stamp"
echo "setup-libtorch: libtorch $TORCH_VERSION ready in $dest ($(du -sh "$dest" | cut -f1))" >&2
