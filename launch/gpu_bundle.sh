#!/usr/bin/env bash
# Fetches, with `apt-get download`, the Debian 12 packages that launch/gpu_check.sh needs on a bare
# CUDA machine (no MPI, HDF5, spdlog, yaml-cpp, CLI11, no registry), into .gpu-bundle/ (ignored by
# git; a device `run` carries it). Idempotent: a package already there at the candidate version is
# not fetched again, and a second run only checks.
#
#   launch/gpu_bundle.sh            # fetch what is missing, check the closure, print the sizes
#
# .gpu-bundle/debs/  build and runtime: headers and CMake / pkg-config files of the libraries the
#                    build finds, their shared libraries, Open MPI's mpirun, and the libraries those
#                    load (the ELF closure below), minus what a CUDA + Python image surely has
# .gpu-bundle/data/  dataset-fashion-mnist: the IDX files of the real run (converted there)
#
# Environment: GPU_BUNDLE_DIR (default .gpu-bundle in the repository).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${GPU_BUNDLE_DIR:-$ROOT/.gpu-bundle}

log() { printf '[gpu-bundle] %s\n' "$*"; }

# What the build finds (CMakeLists.txt's find_package / pkg_check_modules) and what its binaries and
# mpirun load. The -dev packages are named without their Depends: those pull Fortran, C++ and
# parallel HDF5, InfiniBand headers and the like, which nothing here uses; the closure check below
# makes sure every library that is loaded is here or in the image.
BUILD_PACKAGES=(
  # Open MPI 4.1 (mpirun, libmpi, headers) and the libraries it loads
  openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libmunge2 libhwloc15 libudev1
  libevent-core-2.1-7 libevent-pthreads-2.1-7 libnl-3-200 libnl-route-3-200
  # HDF5 1.10 (serial) with its LZF filter, and what libhdf5 links (libcurl for its ros3 driver)
  libhdf5-dev libhdf5-103-1 hdf5-plugin-lzf liblzf1 libaec0 libsz2
  libcurl4 libbrotli1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1
  libcom-err2 libldap-2.5-0 libsasl2-2 libnghttp2-14 libpsl5 libunistring2 librtmp1 libssh2-1
  # logging, configuration, command line, JSON, tests
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libyaml-cpp-dev libyaml-cpp0.7 libcli11-dev
  nlohmann-json3-dev libgtest-dev
  # images and archives (h5shard, sample grids, .npz)
  libpng-dev libpng16-16 libjpeg-dev libjpeg62-turbo-dev libjpeg62-turbo libstb-dev libstb0
  libzip-dev libzip4 zlib1g-dev
  # pkg-config for libzip and stb
  pkgconf pkgconf-bin libpkgconf3
)
DATA_PACKAGES=(dataset-fashion-mnist)

# Sonames that a CUDA + Python image surely has (glibc, the GCC runtime, and the compression,
# TLS and IDN libraries that Python and apt themselves need). Anything else a bundled ELF file
# needs must be in the bundle.
BASE_SONAMES=(
  ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libresolv.so.2
  libstdc++.so.6 libgcc_s.so.1 libz.so.1 libzstd.so.1 liblzma.so.5 libbz2.so.1.0
  libcrypto.so.3 libssl.so.3 libgnutls.so.30 libnettle.so.8 libhogweed.so.6 libgmp.so.10
  libidn2.so.0
)
# Open MPI components for fabrics this machine does not have (UCX, libfabric, InfiniBand verbs,
# PSM): gpu_check.sh deletes them after unpacking, so the closure check leaves them out.
OMPI_UNUSED_REGEX='(ucx|ofi|openib|verbs|psm)'

APT_OPTS=(-o APT::Sandbox::User=root -q)

# "URI FILE SIZE HASH" lines for the candidates of the named packages (no download).
uris() { apt-get "${APT_OPTS[@]}" download --print-uris "$@" 2>/dev/null; }

fetch() {  # fetch DIR PACKAGE...: download into DIR what is not there yet; drop other .deb files
  local dir=$1
  shift
  mkdir -p "$dir"
  local listing
  if ! listing=$(uris "$@") || [ -z "$listing" ]; then
    log "apt-get update (package lists missing or stale)"
    apt-get update -qq
    listing=$(uris "$@")
  fi
  local wanted=() missing=() w
  while read -r _ file _; do
    wanted+=("$file")
    [ -s "$dir/$file" ] || missing+=("$file")
  done <<<"$listing"
  if ((${#wanted[@]} != $#)); then
    log "apt-get found ${#wanted[@]} of the $# packages: $*" >&2
    exit 1
  fi
  if ((${#missing[@]})); then
    log "downloading ${#missing[@]} package(s) into $dir"
    (cd "$dir" && apt-get "${APT_OPTS[@]}" download "$@" >/dev/null)
  fi
  # Older versions left by an earlier run would be unpacked too: keep exactly the wanted files.
  local f keep
  for f in "$dir"/*.deb; do
    keep=0
    for w in "${wanted[@]}"; do [ "$w" = "$(basename "$f")" ] && keep=1; done
    ((keep)) || { log "removing stale $f"; rm -f "$f"; }
  done
}

fetch "$DEST/debs" "${BUILD_PACKAGES[@]}"
fetch "$DEST/data" "${DATA_PACKAGES[@]}"

# The closure check: unpack into a scratch prefix; every NEEDED soname of every ELF file (but the
# deleted Open MPI components) must be in the prefix or in BASE_SONAMES.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for f in "$DEST"/debs/*.deb; do dpkg-deb -x "$f" "$scratch"; done
find "$scratch" \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u >"$scratch.have"
printf '%s\n' "${BASE_SONAMES[@]}" >>"$scratch.have"
unresolved=$(find "$scratch" -type f -print0 | xargs -0 file -N | grep -F ': ELF' | cut -d: -f1 |
  grep -Ev "/(lib)?mca_[a-z_]*$OMPI_UNUSED_REGEX" |
  while read -r elf; do
    readelf -d "$elf" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | while read -r so; do
      grep -qxF "$so" "$scratch.have" || echo "$so (needed by ${elf#"$scratch"})"
    done
  done | sort -u)
rm -f "$scratch.have"
if [ -n "$unresolved" ]; then
  log "the bundle is not closed: add the packages that provide" >&2
  printf "  %s\n" "$unresolved" >&2
  exit 1
fi

{
  echo "# Packages of .gpu-bundle ($(date -u +%F)), Debian $(cat /etc/debian_version)"
  for d in debs data; do
    echo "## $d"
    for f in "$DEST/$d"/*.deb; do dpkg-deb -f "$f" Package Version | cut -d" " -f2 | paste -sd" "; done
  done
} >"$DEST/MANIFEST"
log "closure complete (every library loaded is bundled or one of ${#BASE_SONAMES[@]} base sonames)"
log "$(du -sh "$DEST/debs" | cut -f1) in $(find "$DEST/debs" -name '*.deb' | wc -l) build/runtime" \
  "packages; $(du -sh "$DEST/data" | cut -f1) of data; $(du -sh "$DEST" | cut -f1) to carry"
