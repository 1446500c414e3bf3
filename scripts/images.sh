#!/usr/bin/env bash
# Builds hch's container images from the host-built binary (deploy/images/*.Dockerfile):
#
#   hch-base:bookworm       a Debian bookworm root from Debian's packages (debootstrap, minbase
#                           variant, trimmed), imported with `docker import`: the base where no
#                           image registry can be reached. BASE=debian:bookworm-slim skips it.
#   hch-coordinator:TAG     hch built without libtorch (--no-default-features)
#   hch-worker-cpu:TAG      hch with the carved CPU libtorch: workers and the trainer
#   hch-worker-gpu:TAG      only with `gpu`: hch built against the CUDA libtorch in $LIBTORCH
#                           (a full libtorch 2.11 with CUDA, and the nvidia-* wheels' libraries
#                           in $LIBTORCH/lib); never built in CI, untested here (no GPU)
#
# TAG is the crate's version. Prints each image's size. PROFILE=debug builds the images from
# debug binaries (what `make rehearsal` does after `make test` has built them).
#
# Usage: scripts/images.sh [cpu|gpu]        (cpu, the default, builds the base and CPU images)
set -euo pipefail

what=${1:-cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tag=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
base=${BASE:-hch-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
target=${CARGO_TARGET_DIR:-target}
profile=${PROFILE:-release}
case $profile in
    release) cargo_profile=(--release) ;;
    debug) cargo_profile=() ;;
    *) echo "images: PROFILE is release or debug" >&2; exit 2 ;;
esac

say() { echo "images: $*" >&2; }

make_base() {
    if docker image inspect "$base" > /dev/null 2>&1; then
        return
    fi
    if [ "$base" != hch-base:bookworm ]; then
        docker pull "$base"
        return
    fi
    command -v debootstrap > /dev/null || {
        say "installing Debian's debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends debootstrap > /dev/null
    }
    local dir
    dir=$(mktemp -d)
    say "making hch-base:bookworm from $mirror (debootstrap --variant=minbase; a few minutes)"
    debootstrap --variant=minbase bookworm "$dir/root" "$mirror" > "$dir/log" 2>&1 || {
        tail -n 20 "$dir/log" >&2
        exit 1
    }
    # What a server image never reads: documentation, locales, package caches and lists.
    rm -rf "$dir/root"/usr/share/{doc,man,info,locale}/* "$dir/root"/var/cache/apt/* \
        "$dir/root"/var/lib/apt/lists/* "$dir/root"/var/log/*
    tar -C "$dir/root" --numeric-owner -c . |
        docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' - hch-base:bookworm > /dev/null
    rm -rf "$dir"
}

# build NAME DOCKERFILE CONTEXT
build() {
    # (The legacy builder's deprecation notice is dropped; any other message is shown.)
    docker build --quiet --build-arg "BASE=$base" -f "deploy/images/$2" -t "$1:$tag" "$3" \
        2>&1 > /dev/null | grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e '^ *$' >&2 || true
    docker image inspect "$1:$tag" > /dev/null
    say "$1:$tag $(docker image inspect --format '{{.Size}}' "$1:$tag" |
        awk '{printf "%.0f MB", $1 / 1e6}')"
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
make_base
say "hch-base:bookworm $(docker image inspect --format '{{.Size}}' "$base" |
    awk '{printf "%.0f MB", $1 / 1e6}')"

case $what in
    cpu)
        make setup > /dev/null
        # The lean binary first (only the hch crate differs between the two builds).
        say "building hch without libtorch ($profile)"
        cargo build "${cargo_profile[@]}" --quiet --no-default-features
        mkdir -p "$context/coordinator"
        cp "$target/$profile/hch" "$context/coordinator/hch"
        say "building hch with the models ($profile)"
        cargo build "${cargo_profile[@]}" --quiet
        mkdir -p "$context/worker/libtorch"
        cp "$target/$profile/hch" "$context/worker/hch"
        cp -r .libtorch/lib "$context/worker/libtorch/lib"
        strip --strip-debug "$context"/*/hch
        build hch-coordinator coordinator.Dockerfile "$context/coordinator"
        build hch-worker-cpu worker-cpu.Dockerfile "$context/worker"
        # Each image runs its binary: the libraries it links are all there.
        docker run --rm "hch-coordinator:$tag" --version > /dev/null
        docker run --rm "hch-worker-cpu:$tag" --version > /dev/null
        ;;
    gpu)
        : "${LIBTORCH:?set LIBTORCH to a CUDA libtorch 2.11 (see README.md, GPUs)}"
        [ -e "$LIBTORCH/lib/libtorch_cuda.so" ] || {
            say "$LIBTORCH/lib has no libtorch_cuda.so: not a CUDA libtorch"
            exit 1
        }
        say "building hch against $LIBTORCH ($profile)"
        cargo build "${cargo_profile[@]}" --quiet
        mkdir -p "$context/worker/libtorch"
        cp "$target/$profile/hch" "$context/worker/hch"
        cp -rL "$LIBTORCH/lib" "$context/worker/libtorch/lib"
        strip --strip-debug "$context/worker/hch"
        build hch-worker-gpu worker-gpu.Dockerfile "$context/worker"
        ;;
    *)
        say "usage: scripts/images.sh [cpu|gpu]"
        exit 2
        ;;
esac
