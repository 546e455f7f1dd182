#!/usr/bin/env bash
# launch/guidance_accuracy.py on real Fashion-MNIST test images posing as samples: with their own
# labels most are classified as their class, with every label shifted by one almost none; the
# classifier is cached and read back; a file without labels is refused by name.
#   tests/launch/test_guidance_accuracy.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=$ROOT/.venv/bin/python
# Needs the project's .venv (torch, numpy) and Debian's dataset-fashion-mnist: skipped without.
[ -x "$PY" ] || { echo "SKIP: no $PY (launch/setup.sh makes it)"; exit 77; }
[ -d /usr/share/datasets/fashion-mnist ] || { echo "SKIP: no Fashion-MNIST"; exit 77; }
OUT=$(mktemp -d /tmp/difftrain_test_guidance.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

"$PY" - "$OUT" "$ROOT/launch" <<'PY'
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from guidance_accuracy import DATA, load_split
images, labels = load_split(DATA, "test")
x = images[:400, :, :, None]
np.savez(f"{sys.argv[1]}/own.npz", x, labels[:400])
np.savez(f"{sys.argv[1]}/shifted.npz", x, (labels[:400] + 1) % 10)
np.savez(f"{sys.argv[1]}/unlabeled.npz", x)
PY

run() { "$PY" "$ROOT/launch/guidance_accuracy.py" --limit 6000 --epochs 1 --cache "$OUT/c.pt" "$@"; }
run "$OUT/own.npz" "$OUT/shifted.npz" --json "$OUT/r.json" 2>"$OUT/first.err" >"$OUT/first.out" ||
  fail "first run: $(cat "$OUT/first.err")"
grep -q "trained the classifier" "$OUT/first.err" || fail "no training message"
"$PY" - "$OUT/r.json" <<'PY' || fail "accuracies: $(cat "$OUT/r.json")"
import json, sys
r = json.load(open(sys.argv[1]))
own, shifted = (s["accuracy"] for s in r["samples"])
print(f"classifier {r['classifier_test_accuracy']:.3f}, own labels {own:.3f}, shifted {shifted:.3f}")
assert r["classifier_test_accuracy"] > 0.6
assert own > 0.6 and shifted < 0.2
assert r["samples"][0]["num"] == 400
PY

run "$OUT/own.npz" 2>"$OUT/second.err" >"$OUT/second.out" || fail "second run"
if grep -q "trained the classifier" "$OUT/second.err"; then fail "the cache was not read"; fi
diff <(head -2 "$OUT/first.out") "$OUT/second.out" >/dev/null || fail "cached classifier differs"

if run "$OUT/unlabeled.npz" 2>"$OUT/bad.err" >/dev/null; then fail "accepted a file without labels"; fi
grep -q "unlabeled.npz: no arr_1" "$OUT/bad.err" || fail "bad file not named: $(cat "$OUT/bad.err")"
echo "guidance_accuracy: ok"
