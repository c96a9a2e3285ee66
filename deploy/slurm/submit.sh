#!/usr/bin/env bash
# Submit deploy/slurm/sweep.sbatch after checking what it needs, so a mistake is reported now and
# not after the job has waited in the queue (docs/cluster.md, "SLURM").
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: SHARED_DIR=DIR deploy/slurm/submit.sh EXPERIMENT.yaml [harness sweep options, e.g. --resume]

Environment (only SHARED_DIR is required):
  SHARED_DIR      a folder every node mounts at the same path; holds the MLflow store, Ray's
                  storage, the results and the job's log (logs/histo-sweep-JOBID.out)
  DATASET_ROOT    the dataset (default: the experiment's dataset.root); read by the driver alone
  NODES           nodes to allocate (default 1): one Ray head, NODES-1 workers
  GPUS_PER_NODE   GPUs to allocate per node (default 0)
  TIME_LIMIT      sbatch --time (default 24:00:00); PARTITION  sbatch --partition (default: the site's)
  HARNESS_VENV    the project's venv on the shared filesystem (default: this checkout's .venv)
  HEAD_IP         address the head advertises (default 127.0.0.1 on one node, else its first address)
  RAY_PORT, MLFLOW_PORT, MLFLOW_BACKEND_STORE_URI   see deploy/slurm/sweep.sbatch
USAGE
}

fail() {
  echo "error: $1" >&2
  exit 2
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
if [[ $# -lt 1 ]]; then usage >&2; exit 2; fi
checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ -n ${SHARED_DIR:-} ]] || fail "SHARED_DIR is not set: a folder every node mounts at the same path"
[[ -f $1 ]] || fail "$1: no such experiment file"
experiment=$(realpath "$1")
shift
command -v sbatch >/dev/null || fail "sbatch not found: run this on a SLURM login node"
export HARNESS_VENV=${HARNESS_VENV:-$checkout/.venv}
[[ -x $HARNESS_VENV/bin/harness ]] || fail "HARNESS_VENV=$HARNESS_VENV: no harness there (run 'make test' or install the project into it)"
if [[ -n ${DATASET_ROOT:-} ]]; then
  [[ -d $DATASET_ROOT ]] || fail "DATASET_ROOT=$DATASET_ROOT: not a folder"
  export DATASET_ROOT=$(realpath "$DATASET_ROOT")
fi
mkdir -p "$SHARED_DIR/logs" || fail "SHARED_DIR=$SHARED_DIR: cannot create $SHARED_DIR/logs"
export SHARED_DIR=$(realpath "$SHARED_DIR")

args=(--parsable --chdir="$checkout" --output="$SHARED_DIR/logs/%x-%j.out" --nodes="${NODES:-1}")
if [[ ${GPUS_PER_NODE:-0} != 0 ]]; then args+=(--gpus-per-node="$GPUS_PER_NODE"); fi
if [[ -n ${TIME_LIMIT:-} ]]; then args+=(--time="$TIME_LIMIT"); fi
if [[ -n ${PARTITION:-} ]]; then args+=(--partition="$PARTITION"); fi
job=$(sbatch "${args[@]}" "$checkout/deploy/slurm/sweep.sbatch" "$experiment" "$@")
job=${job%%;*}
echo "submitted job $job; log: $SHARED_DIR/logs/histo-sweep-$job.out; stop it with: scancel $job"
