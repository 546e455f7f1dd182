#!/usr/bin/env bash
# Sets up difftrain on a Debian 12 machine and builds it into build/. Idempotent: a second run
# that finds everything in place only checks and finishes in seconds.
#
#   launch/setup.sh                        # system packages, .venv with the torch wheel, build
#   LIBTORCH_DIR=/opt/libtorch launch/setup.sh   # use an unpacked LibTorch instead of the wheel
#   TORCH_VERSION=2.11.0 VENV=/opt/venv-torch2.11 BUILD_DIR=build-torch2.11 launch/setup.sh
#                                          # another torch wheel, in its own venv and build folder
#
# Environment: BUILD_DIR (default build), BUILD_TYPE (Release), DIFFTRAIN_NCCL (AUTO|ON|OFF),
# JOBS (default: number of cores), TORCH_VERSION (default 2.15.0, the tested one), VENV (default
# .venv; give another torch version its own, or the next run with the default reinstalls 2.15).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
BUILD_TYPE=${BUILD_TYPE:-Release}
TORCH_VERSION=${TORCH_VERSION:-2.15.0}
VENV=${VENV:-$ROOT/.venv}
JOBS=${JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}  # nproc alone honours OMP_NUM_THREADS

log() { printf '[setup] %s\n' "$*"; }

# 1. System packages (Debian). Checked with dpkg-query first, so a ready machine needs no apt.
APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config git
  python3 python3-venv python3-pip
  openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
  libspdlog-dev libfmt-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libpng-dev libjpeg-dev dataset-fashion-mnist zlib1g-dev libstb-dev hdf5-plugin-lzf liblzf1 libzip-dev iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. LibTorch: a user's unpacked LibTorch, or the torch wheel in a project virtual environment.
if [ -n "${LIBTORCH_DIR:-}" ]; then
  [ -f "$LIBTORCH_DIR/share/cmake/Torch/TorchConfig.cmake" ] ||
    { echo "LIBTORCH_DIR=$LIBTORCH_DIR has no share/cmake/Torch/TorchConfig.cmake" >&2; exit 1; }
  TORCH_PREFIX=$LIBTORCH_DIR
else
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
  if ! compgen -G "$VENV/lib/python3*/site-packages/torch-$TORCH_VERSION*.dist-info" >/dev/null; then
    log "installing torch==$TORCH_VERSION from PyPI into $VENV (a few GB, once)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  fi
  # The weights tests read difftrain's safetensors files with the reference reader.
  if ! compgen -G "$VENV/lib/python3*/site-packages/safetensors-*.dist-info" >/dev/null; then
    log "installing safetensors from PyPI into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check safetensors
  fi
  TORCH_PREFIX=$(echo "$VENV"/lib/python3*/site-packages/torch/share/cmake)
fi

# 3. Configure (once, or again when the LibTorch location changes) and build.
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ] || ! grep -qF "CMAKE_PREFIX_PATH:UNINITIALIZED=$TORCH_PREFIX" "$BUILD_DIR/CMakeCache.txt"; then
  log "configuring $BUILD_DIR against LibTorch at $TORCH_PREFIX"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DDIFFTRAIN_NCCL="${DIFFTRAIN_NCCL:-AUTO}"
fi
log "building $BUILD_DIR"
build_start=$SECONDS
cmake --build "$BUILD_DIR" -j "$JOBS"
log "ready: $BUILD_DIR/difftrain (build step: $((SECONDS - build_start)) s)"
