#!/usr/bin/env bash
# launch/sample_quality.py on real Fashion-MNIST images posing as samples: with their own labels
# most are classified as their class, with every label shifted by one almost none; real images lie
# near the test set in the Frechet distance, precision and recall, and noise far from it; the
# classifier is cached and read back; a file of another shape is refused by name.
#   tests/launch/test_sample_quality.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=$ROOT/.venv/bin/python
# Needs the project's .venv (torch, numpy) and Debian's dataset-fashion-mnist: skipped without.
[ -x "$PY" ] || { echo "SKIP: no $PY (launch/setup.sh makes it)"; exit 77; }
[ -d /usr/share/datasets/fashion-mnist ] || { echo "SKIP: no Fashion-MNIST"; exit 77; }
OUT=$(mktemp -d /tmp/difftrain_test_quality.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

"$PY" - "$OUT" "$ROOT/launch" <<'PY'
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from sample_quality import DATA, load_split
images, labels = load_split(DATA, "test")
# Not the first 400, against which precision and recall are measured.
x, y = images[400:800, :, :, None], labels[400:800]
np.savez(f"{sys.argv[1]}/own.npz", x, y)
np.savez(f"{sys.argv[1]}/shifted.npz", x, (y + 1) % 10)
np.savez(f"{sys.argv[1]}/unlabeled.npz", x)
noise = np.random.default_rng(0).integers(0, 256, (400, 28, 28, 1), dtype=np.uint8)
np.savez(f"{sys.argv[1]}/noise.npz", noise)
np.savez(f"{sys.argv[1]}/rgb.npz", np.zeros((4, 28, 28, 3), np.uint8))
PY

run() { "$PY" "$ROOT/launch/sample_quality.py" --limit 6000 --epochs 1 --cache "$OUT/c.pt" "$@"; }
run "$OUT/own.npz" "$OUT/shifted.npz" "$OUT/unlabeled.npz" "$OUT/noise.npz" --json "$OUT/r.json" \
  2>"$OUT/first.err" >"$OUT/first.out" ||
  fail "first run: $(cat "$OUT/first.err")"
grep -q "trained the classifier" "$OUT/first.err" || fail "no training message"
"$PY" - "$OUT/r.json" <<'PY' || fail "accuracies: $(cat "$OUT/r.json")"
import json, sys
r = json.load(open(sys.argv[1]))
own, shifted, unlabeled, noise = r["samples"]
print(f"classifier {r['classifier_test_accuracy']:.3f}, own labels {own['accuracy']:.3f}, "
      f"shifted {shifted['accuracy']:.3f}; FD, precision, recall: test images {own['fd']:.2f}, "
      f"{own['precision']:.3f}, {own['recall']:.3f}; training images {own['fd_real']:.2f}, "
      f"{own['precision_real']:.3f}, {own['recall_real']:.3f}; noise {noise['fd']:.2f}, "
      f"{noise['precision']:.3f}, {noise['recall']:.3f}")
assert r["classifier_test_accuracy"] > 0.6
assert own["accuracy"] > 0.6 and shifted["accuracy"] < 0.2
assert own["num"] == 400
# The same images score the same distance whatever their labels; without labels, no accuracy.
assert own["fd"] == shifted["fd"] == unlabeled["fd"] and "accuracy" not in unlabeled
# Test images against the test set score about what training images do, noise far more.
assert own["fd"] < 2 * own["fd_real"] and own["fd_real"] > 0
assert noise["fd"] > 10 * own["fd_real"]
assert own["precision"] > 0.6 and own["recall"] > 0.6
assert noise["precision"] < 0.05 and noise["recall"] < 0.05
assert abs(own["precision"] - own["precision_real"]) < 0.15
PY

run "$OUT/own.npz" 2>"$OUT/second.err" >"$OUT/second.out" || fail "second run"
if grep -q "trained the classifier" "$OUT/second.err"; then fail "the cache was not read"; fi
diff <(head -2 "$OUT/first.out") "$OUT/second.out" >/dev/null || fail "cached classifier differs"

if run "$OUT/rgb.npz" 2>"$OUT/bad.err" >/dev/null; then fail "accepted RGB images"; fi
grep -q "rgb.npz: images of shape" "$OUT/bad.err" || fail "bad file not named: $(cat "$OUT/bad.err")"
echo "sample_quality: ok"
