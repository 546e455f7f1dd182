#!/usr/bin/env bash
# launch/reproduce.sh end to end at toy size, as a user runs it: two runs (L_vlb uniform and
# importance-sampled) trained for seconds, the post-hoc EMA sweep, the test bound and the report;
# both again with another training seed (the report's spread over seeds); then the first command
# again (every step skipped, the hand-written prose kept), and bad options.
#   tests/launch/test_reproduce.sh DIFFTRAIN_BIN H5SHARD_BIN
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export DIFFTRAIN_BIN=$1 H5SHARD_BIN=$2
OUT=$(mktemp -d /tmp/difftrain_test_reproduce.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

ARGS=(--no-setup --runs e,f --minutes 0.1 --eval-images 2 --sweep-images 1 --sweep 0.05:0.10:2
  --set diffusion.steps=20 --set logging.log_every=2 --set logging.timestep_stats_every=4
  --set logging.bpd_every=5 --set training.phema.snapshot_every=4
  --out "$OUT/runs" --report "$OUT/results.md")
"$ROOT/launch/reproduce.sh" "${ARGS[@]}" >"$OUT/first.log" 2>&1 || {
  rc=$?
  cat "$OUT/first.log"
  fail "launch/reproduce.sh exited with $rc"
}

report=$OUT/results.md
for line in "| e | L_vlb, uniform timesteps |" "| f | L_vlb, importance sampling (loss-second-moment) |" \
  "| 3 | e → f |" "## Gradient noise"; do
  grep -qF "$line" "$report" || fail "no '$line' in the report"
done
[ -s "$OUT/results_heldout_bpd.png" ] || fail "no plot"
[ "$(head -1 "$OUT/results_heldout_bpd.csv")" = "training_images,e_vlb_uniform,f_vlb_importance" ] ||
  fail "plot table header: $(head -1 "$OUT/results_heldout_bpd.csv")"
# The two runs were evaluated on the same images: the paired comparison needs it.
python3 - "$OUT/runs" <<'PY' || fail "eval reports"
import json, sys
e, f = (json.load(open(f"{sys.argv[1]}/{r}/eval/test.json")) for r in ("e_vlb_uniform", "f_vlb_importance"))
assert e["per_image"]["index"] == f["per_image"]["index"], (e["per_image"], f["per_image"])
assert len(e["per_image"]["total_bpd"]) == 2 and e["dims"] == e["real_dims"] == 784, e["dims"]
assert abs(sum(e["per_image"]["total_bpd"]) / 2 - e["total_bpd"]) < 1e-6
PY

# Another training seed: its runs go beside the first ones, and the report adds the spread over
# seeds of each run and of each finding's difference.
"$ROOT/launch/reproduce.sh" "${ARGS[@]}" --seed 1 >"$OUT/seed1.log" 2>&1 || {
  rc=$?
  cat "$OUT/seed1.log"
  fail "launch/reproduce.sh --seed 1 exited with $rc"
}
[ -f "$OUT/runs/f_vlb_importance_seed1/eval/test.json" ] || fail "no seed-1 run of f"
for line in "| e (seed 1) | L_vlb, uniform timesteps |" "| e | 0, 1 |" "| f | 0, 1 |" \
  "| 3 | e → f | 2 |"; do
  grep -qF "$line" "$report" || fail "no '$line' in the report"
done

# Again: nothing to do, and the prose written into the report stays.
python3 - "$report" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"(<!-- prose:finding3 -->\n).*?(\n<!-- /prose -->)", r"\1Hand-written.\2", text, flags=re.S)
open(sys.argv[1], "w").write(text)
PY
"$ROOT/launch/reproduce.sh" "${ARGS[@]}" >"$OUT/second.log" 2>&1 || {
  rc=$?
  cat "$OUT/second.log"
  fail "second run exited with $rc"
}
[ "$(grep -c "already done" "$OUT/second.log")" = 6 ] || {
  cat "$OUT/second.log"
  fail "the second run redid work"
}
grep -qx "Hand-written." "$report" || fail "the prose was not kept"

# Bad options: exit code 2 and a message naming the value.
for bad in "--runs x" "--minutes -1" "--report out.txt"; do
  # shellcheck disable=SC2086
  if "$ROOT/launch/reproduce.sh" --no-setup $bad >"$OUT/bad.log" 2>&1; then fail "accepted $bad"; fi
  grep -qF -- "${bad#* }" "$OUT/bad.log" || fail "'$bad': $(cat "$OUT/bad.log")"
done
echo "ok"
