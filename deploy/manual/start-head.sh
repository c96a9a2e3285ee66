#!/usr/bin/env bash
# Start the Ray head of a hand-made cluster, with token authentication (docs/cluster.md, "By hand").
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: deploy/manual/start-head.sh

Starts a Ray head on this machine (run it with the project's venv active). Environment:
  RAY_AUTH_TOKEN_PATH  token file, created (mode 600) when missing; put it where every node reads it
                       (default ~/.ray/auth_token); or RAY_AUTH_TOKEN, the token itself
  HEAD_PORT            GCS port workers join on (default 6379)
  NUM_CPUS, NUM_GPUS   what this node offers to trials (default: what Ray detects)
  NODE_IP              address to advertise and listen on (default: Ray's choice, this machine's
                       network address); 127.0.0.1 keeps the whole cluster on this machine
  DASHBOARD_HOST       interface the dashboard binds to (default 127.0.0.1: reach it by SSH tunnel;
                       0.0.0.0 exposes it, and it asks for the token)
  DASHBOARD_PORT       (default 8265)
USAGE
}

case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac
command -v ray >/dev/null || { echo "error: 'ray' not on PATH; activate the project's venv first" >&2; exit 2; }

# Ray reports usage statistics unless told not to; opt in with RAY_USAGE_STATS_ENABLED=1.
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
# Ray swaps a loopback NODE_IP for the machine's network address, and listens on every interface,
# unless this is 0: a single-host cluster on 127.0.0.1 then stays on loopback.
if [[ ${NODE_IP:-} == 127.0.0.1 ]]; then export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; fi

# Set explicitly so a missing token is an error, not a cluster that silently runs without auth.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  if [[ ! -s $RAY_AUTH_TOKEN_PATH ]]; then
    mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH")
    echo "created Ray token $RAY_AUTH_TOKEN_PATH"
  fi
fi

args=(--head --port "${HEAD_PORT:-6379}"
      --dashboard-host "${DASHBOARD_HOST:-127.0.0.1}" --dashboard-port "${DASHBOARD_PORT:-8265}")
if [[ -n ${NUM_CPUS:-} ]]; then args+=(--num-cpus "$NUM_CPUS"); fi
if [[ -n ${NUM_GPUS:-} ]]; then args+=(--num-gpus "$NUM_GPUS"); fi
if [[ -n ${NODE_IP:-} ]]; then args+=(--node-ip-address "$NODE_IP"); fi

ray start "${args[@]}"
echo "workers: HEAD_ADDRESS=${NODE_IP:-$(hostname -I | awk '{print $1}')}:${HEAD_PORT:-6379} deploy/manual/start-worker.sh"
