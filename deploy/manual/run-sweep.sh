#!/usr/bin/env bash
# Run `harness sweep` against the hand-made cluster (docs/cluster.md, "By hand").
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: HEAD_ADDRESS=HOST:6379 TRACKING_URI=http://HOST:5000 SHARED_DIR=/shared/histo \
         deploy/manual/run-sweep.sh EXPERIMENT.yaml [harness sweep options, e.g. --root DIR --resume]

Run it on a node of the cluster (HEAD_ADDRESS=auto works there too), with the project's venv active.
Environment:
  HEAD_ADDRESS          --address: HOST:6379, auto, or ray://HOST:10001 from outside the cluster
  TRACKING_URI          --tracking-uri: the MLflow server started by start-mlflow.sh
  SHARED_DIR            shared filesystem; STORAGE and OUTPUT_DIR default under it
  STORAGE               --storage (default $SHARED_DIR/ray)
  OUTPUT_DIR            --output-dir (default $SHARED_DIR/results): holds _data, read by every trial
  RAY_AUTH_TOKEN_PATH   the head's token file (default ~/.ray/auth_token); or RAY_AUTH_TOKEN
USAGE
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
if [[ $# -lt 1 || -z ${HEAD_ADDRESS:-} || -z ${TRACKING_URI:-} || -z ${SHARED_DIR:-} ]]; then
  usage >&2
  exit 2
fi
experiment=$1
shift
command -v harness >/dev/null || { echo "error: 'harness' not on PATH; activate the project's venv first" >&2; exit 2; }

# A driver joining by HOST:6379 or ray:// does not switch auth on by itself.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
# A head on loopback (docs/cluster.md, "Try it on one machine first"): the driver stays there too.
if [[ $HEAD_ADDRESS == 127.0.0.1:* ]]; then export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; fi

exec harness sweep "$experiment" --address "$HEAD_ADDRESS" --tracking-uri "$TRACKING_URI" \
  --storage "${STORAGE:-$SHARED_DIR/ray}" --output-dir "${OUTPUT_DIR:-$SHARED_DIR/results}" "$@"
