#!/usr/bin/env bash
# Runs a command as if this machine lacked the packages of the GPU bundle (.gpu-bundle, made by
# launch/gpu_bundle.sh), as the bare CUDA machine does: in a private mount namespace, the host's
# copies of their headers, CMake and pkg-config files, programs and libraries are hidden (empty
# directories, or /dev/null over single files), so that a build or an mpirun that still reached
# for them fails instead of passing by accident. Needs root (unshare -m); other processes of the
# machine see nothing of it.
#
#   tests/cuda/without_system_packages.sh [BUNDLE_DIR] -- COMMAND...
#   tests/cuda/without_system_packages.sh -- launch/gpu_check.sh /tmp/gpu-check-out --cpu
#
# Shared libraries that the host's own tools load (libcurl for CMake, Kerberos, libudev) stay
# visible: the closure check of gpu_bundle.sh covers those.
set -euo pipefail
BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.gpu-bundle
if [ "${1:-}" != -- ]; then
  BUNDLE=$1
  shift
fi
[ "${1:-}" = -- ] || { echo "usage: $0 [BUNDLE_DIR] -- COMMAND..." >&2; exit 2; }
shift

if [ "${DIFFTRAIN_IN_NAMESPACE:-}" != 1 ]; then
  exec unshare -m --propagation private env DIFFTRAIN_IN_NAMESPACE=1 "$0" "$BUNDLE" -- "$@"
fi

A=/usr/lib/x86_64-linux-gnu
hidden_dirs=(
  "$A/openmpi" "$A/pmix2" "$A/hdf5" /usr/share/openmpi /usr/share/pmix /etc/openmpi
  /usr/include/hdf5 /usr/include/spdlog /usr/include/fmt /usr/include/CLI /usr/include/nlohmann
  /usr/include/gtest /usr/include/gmock /usr/include/yaml-cpp /usr/include/libpng16
  /usr/include/stb "$A/cmake/GTest" "$A/cmake/fmt" "$A/cmake/spdlog" "$A/cmake/yaml-cpp"
  "$A/cmake/libzip" /usr/share/cmake/CLI11 /usr/share/cmake/nlohmann_json
)
dirs=0 files=0
for d in "${hidden_dirs[@]}"; do
  if [ -d "$d" ]; then
    mount -t tmpfs -o size=1m none "$d"
    dirs=$((dirs + 1))
  fi
done
# Single files: every regular file of the bundle's packages that the host has, except the
# generic shared libraries named above.
project_libs='/lib(mpi|open-|hdf5|spdlog|fmt|yaml-cpp|hwloc|event|pmix|munge|zip|png|jpeg|stb|lzf|sz|aec|nl-|mca_common|gtest|gmock)'
while read -r path; do
  case "$path" in *.so | *.so.*) [[ $path =~ $project_libs ]] || continue ;; esac
  target=$(readlink -f "$path")
  if [ -f "$target" ] && [ ! -c "$target" ]; then
    mount --bind /dev/null "$target"
    files=$((files + 1))
  fi
done < <(for f in "$BUNDLE"/debs/*.deb; do dpkg-deb -c "$f"; done | awk '/^-/ {print substr($6, 2)}' |
  grep -v -E "^($(IFS='|'; echo "${hidden_dirs[*]}"))/" | sort -u)
echo "[without-system-packages] hid $dirs directories and $files files of the bundle's packages" >&2
exec "$@"
