#!/usr/bin/env bash
# Runs an MPI job across two "nodes" on this machine: two Linux network namespaces joined by a
# veth pair, one rank per namespace, launched by mpirun with an rsh agent that enters the target
# namespace, TCP only. It tests what crosses a real network stack (the launch, the out-of-band
# wire-up, the TCP transport, the node-local rank of each process) without a second machine.
#
#   launch/netns_mpirun.sh PROGRAM [ARGS...]     (root; Debian's iproute2)
#
# Exits 77 when namespaces cannot be made here (`ip netns add` fails, e.g. in a container without
# CAP_SYS_ADMIN), saying so; any other failure is the job's.
set -euo pipefail

if [[ "${1:-}" == "--agent" ]]; then
  # Called by mpirun as the rsh agent: [ssh-style options] HOST COMMAND...
  shift
  while [[ "${1:-}" == -* ]]; do shift; done
  host=$1
  shift
  ns=$(cat "$NETNS_MAP_DIR/$host")
  exec ip netns exec "$ns" /bin/sh -c "$*"
fi

tag="dt$$"
ns0="${tag}a" ns1="${tag}b"
subnet=10.213.$((RANDOM % 250)).0
ip0="${subnet%.0}.1" ip1="${subnet%.0}.2"
map_dir=$(mktemp -d)

cleanup() {
  ip netns del "$ns0" 2>/dev/null || true
  ip netns del "$ns1" 2>/dev/null || true
  rm -rf "$map_dir"
}
trap cleanup EXIT

if ! err=$(ip netns add "$ns0" 2>&1); then
  echo "SKIP: 'ip netns add' failed here: $err"
  exit 77
fi
ip netns add "$ns1"
ip link add "${tag}v0" type veth peer name "${tag}v1"
ip link set "${tag}v0" netns "$ns0"
ip link set "${tag}v1" netns "$ns1"
ip -n "$ns0" addr add "$ip0/24" dev "${tag}v0"
ip -n "$ns1" addr add "$ip1/24" dev "${tag}v1"
for ns in "$ns0" "$ns1"; do ip -n "$ns" link set lo up; done
ip -n "$ns0" link set "${tag}v0" up
ip -n "$ns1" link set "${tag}v1" up

echo "$ns0" >"$map_dir/$ip0"
echo "$ns1" >"$map_dir/$ip1"
printf '%s slots=1\n%s slots=1\n' "$ip0" "$ip1" >"$map_dir/hostfile"

# mpirun runs in the first namespace: the first host is local to it, the second is reached
# through the agent. No shared-memory transport between the ranks: TCP over the veth only.
env_flags=(-x OMP_NUM_THREADS=1 -x PATH)
[[ -n "${LD_LIBRARY_PATH:-}" ]] && env_flags+=(-x LD_LIBRARY_PATH)
ip netns exec "$ns0" env NETNS_MAP_DIR="$map_dir" \
  mpirun --allow-run-as-root --hostfile "$map_dir/hostfile" -np 2 --map-by node --bind-to none \
  --mca plm_rsh_agent "$(readlink -f "$0") --agent" \
  --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include "$subnet/24" \
  --mca oob_tcp_if_include "$subnet/24" --mca mpi_yield_when_idle 1 \
  "${env_flags[@]}" \
  "$@"
