#!/usr/bin/env bash
# Plays Slurm's part for launch/slurm.sbatch on a machine without Slurm:
#   slurm_standin.sh SCRIPT NTASKS WAIT_FILE -- SCRIPT_ARGS...
# runs SCRIPT as the batch shell (srun is a stand-in that starts the NTASKS tasks with mpirun),
# waits until WAIT_FILE is non-empty (the job is training), then sends the signal of the script's
# `#SBATCH --signal=[B:]SIG@TIME` the way Slurm does at the time limit: with `B:` to the batch
# shell only, else to every task of the job step and not to the batch shell. It prints the batch
# shell's exit status and exits with it (124 if the job did not end within 90 s of the signal).
# WAIT_FILE '-' sends no signal: a plain (re)submission.
set -uo pipefail
SCRIPT=$1 NTASKS=$2 WAIT_FILE=$3
shift 4

fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
# srun's own options (--mpi, --kill-on-bad-exit, ...) mean nothing to mpirun: drop them.
cat >"$fake/srun" <<'SRUN'
#!/usr/bin/env bash
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
exec mpirun --oversubscribe --bind-to none -np "$SLURM_NTASKS" "$@"
SRUN
chmod +x "$fake/srun"

directive=$(sed -n 's/^#SBATCH --signal=\(.*\)$/\1/p' "$SCRIPT" | head -n 1)
spec=${directive%@*}
signal=${spec#B:}
[[ $spec == B:* ]] && target=batch || target=tasks

# setsid: the batch shell leads its own process group, as under slurmstepd.
PATH="$fake:$PATH" SLURM_NTASKS=$NTASKS SLURM_JOB_NUM_NODES=1 SLURM_JOB_ID=$$ \
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
  setsid bash "$SCRIPT" "$@" &
batch=$!

descendants() {
  local kid
  for kid in $(pgrep -P "$1"); do
    echo "$kid"
    descendants "$kid"
  done
}
job=()  # every process of the job, to clean up after a batch shell that died first

if [[ $WAIT_FILE != - ]]; then
  for _ in $(seq 600); do
    [[ -s $WAIT_FILE ]] && break
    kill -0 "$batch" 2>/dev/null || break
    sleep 0.1
  done
  job=($(descendants "$batch"))
  if [[ $target == batch ]]; then
    echo "standin: SIG$signal to the batch shell ($directive)"
    kill -s "$signal" "$batch"
  else
    # The tasks: the difftrain processes under the batch shell (not srun / mpirun).
    tasks=$(for pid in "${job[@]}"; do
      [[ $(ps -o comm= -p "$pid") == difftrain ]] && echo "$pid"
    done)
    echo "standin: SIG$signal to the tasks" $tasks "($directive)"
    kill -s "$signal" $tasks
  fi
fi

for _ in $(seq 900); do
  kill -0 "$batch" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$batch" 2>/dev/null; then
  echo "standin: the job did not end; killing it"
  kill -KILL "$batch" "${job[@]}" 2>/dev/null
  exit 124
fi
wait "$batch"
status=$?
# Processes left behind by a batch shell that died first (the B: form): Slurm would kill them at
# the time limit.
((${#job[@]})) && kill -KILL "${job[@]}" 2>/dev/null
echo "standin: batch shell exit $status"
exit "$status"
