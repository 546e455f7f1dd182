#!/bin/sh
# Runs a command as one rank of an mpirun job whose ranks must look like separate hosts to NCCL:
# each rank gets its own NCCL_HOSTID, so NCCL accepts several ranks on one GPU (the GPU check's
# 2 ranks on its single GPU) and connects them over its socket transport, on the loopback
# interface unless NCCL_SOCKET_IFNAME says otherwise.
#   mpirun -np 2 tests/cuda/per_rank_hostid.sh PROGRAM ARGS...
NCCL_HOSTID="difftrain-rank-${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}"
NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}
export NCCL_HOSTID NCCL_SOCKET_IFNAME
exec "$@"
