#!/usr/bin/env bash
# The demo's HDF5 shards from Debian's dataset-fashion-mnist: data/fashion_mnist/train (4 shards)
# and data/fashion_mnist/test (1 shard), what configs/fashion_mnist.yaml reads. A split whose
# manifest is there is kept, so that the quickstart, the bench and the scaling runs can each call
# it first.
#   launch/fashion_mnist_shards.sh [OUT_DIR]     (default data/fashion_mnist; needs build/h5shard)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/data/fashion_mnist}
FMNIST=/usr/share/datasets/fashion-mnist
H5SHARD=${H5SHARD_BIN:-$ROOT/build/h5shard}
[ -d "$FMNIST" ] ||
  { echo "no $FMNIST: apt-get install dataset-fashion-mnist (launch/setup.sh does)" >&2; exit 1; }
[ -x "$H5SHARD" ] || { echo "no $H5SHARD: build first (launch/setup.sh)" >&2; exit 1; }
for split in train test; do
  if [ ! -f "$OUT/$split/manifest.json" ]; then
    "$H5SHARD" convert --format idx --split "$split" --input "$FMNIST" --out "$OUT/$split" \
      --shards "$([ "$split" = train ] && echo 4 || echo 1)" --quiet
  fi
done
