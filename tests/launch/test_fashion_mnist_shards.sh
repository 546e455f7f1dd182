#!/usr/bin/env bash
# launch/fashion_mnist_shards.sh, as the quickstart, the bench and the scaling runs call it: the
# demo's train (4 shards, 60,000 images) and test (1 shard, 10,000) splits from Debian's
# dataset-fashion-mnist, each with its manifest; a second call keeps both as they are; without
# h5shard it fails saying so.
#   tests/launch/test_fashion_mnist_shards.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=$(realpath "$1")
[ -d /usr/share/datasets/fashion-mnist ] || { echo "SKIP: no dataset-fashion-mnist"; exit 77; }
WORK=$(mktemp -d /tmp/difftrain_test_fashion_mnist_shards.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
export H5SHARD_BIN=$BUILD/h5shard

"$ROOT/launch/fashion_mnist_shards.sh" "$WORK/fm" || fail "the first call"
python3 - "$WORK/fm" <<'PY' || fail "the manifests (above)"
import json, os, sys
for split, shards, n in (("train", 4, 60000), ("test", 1, 10000)):
    m = json.load(open(os.path.join(sys.argv[1], split, "manifest.json")))
    assert (m["num_samples"], len(m["shards"])) == (n, shards), (split, m["shards"])
    assert (m["height"], m["width"], m["channels"], m["num_classes"]) == (28, 28, 1, 10), m
    for s in m["shards"]:
        assert os.path.getsize(os.path.join(sys.argv[1], split, s["file"])) == s["bytes"], s
PY
before=$(stat -c '%n %Y %s' "$WORK"/fm/*/*)
sleep 1
"$ROOT/launch/fashion_mnist_shards.sh" "$WORK/fm" || fail "the second call"
[ "$before" = "$(stat -c '%n %Y %s' "$WORK"/fm/*/*)" ] || fail "the second call rewrote the shards"

rc=0
H5SHARD_BIN=$WORK/no-h5shard "$ROOT/launch/fashion_mnist_shards.sh" "$WORK/other" \
  2>"$WORK/err" || rc=$?
((rc != 0)) || fail "no h5shard, yet it succeeded"
grep -q "no $WORK/no-h5shard: build first" "$WORK/err" ||
  { cat "$WORK/err"; fail "no reason given"; }
echo "PASSED"
