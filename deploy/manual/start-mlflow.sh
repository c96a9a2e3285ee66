#!/usr/bin/env bash
# Run the MLflow tracking server on the head, reachable by every node (docs/cluster.md, "The MLflow server").
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: SHARED_DIR=/shared/histo deploy/manual/start-mlflow.sh

Runs `harness server` in the foreground (use tmux/screen; Ctrl-C stops it). Environment:
  SHARED_DIR                    required; the database and artifacts go under $SHARED_DIR/mlflow
  MLFLOW_HOST                   interface to listen on (default 127.0.0.1: this machine only);
                                the head's address, or 0.0.0.0, for trials on other nodes
  MLFLOW_BACKEND_STORE_URI      default sqlite:///$SHARED_DIR/mlflow/mlflow.db;
                                postgresql://user:pw@host/db for many concurrent trials
  MLFLOW_PORT                   default 5000
  MLFLOW_SERVER_ALLOWED_HOSTS   Host headers MLflow accepts; default: this host's names, localhost
                                and private IPs
USAGE
}

case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac
if [[ -z ${SHARED_DIR:-} ]]; then usage >&2; exit 2; fi
command -v harness >/dev/null || { echo "error: 'harness' not on PATH; activate the project's venv first" >&2; exit 2; }

port=${MLFLOW_PORT:-5000}
mkdir -p "$SHARED_DIR/mlflow/artifacts"
# MLflow 3 refuses API calls addressed to a host name or public IP (DNS-rebinding guard) unless listed;
# listing anything replaces its default, so localhost and the private ranges are listed again.
private="localhost:*,127.0.0.1:*,10.*,172.1[6-9].*,172.2[0-9].*,172.3[01].*,192.168.*"
export MLFLOW_SERVER_ALLOWED_HOSTS=${MLFLOW_SERVER_ALLOWED_HOSTS:-$(hostname -s):$port,$(hostname -f):$port,$private}

exec harness server --host "${MLFLOW_HOST:-127.0.0.1}" --port "$port" \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$SHARED_DIR/mlflow/mlflow.db}" \
  --artifacts-destination "$SHARED_DIR/mlflow/artifacts"
