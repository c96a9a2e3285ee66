#!/usr/bin/env bash
# Join this machine to the Ray head started by start-head.sh (docs/cluster.md, "By hand").
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: HEAD_ADDRESS=HOST:6379 deploy/manual/start-worker.sh
   or: deploy/manual/start-worker.sh HOST:6379

Starts a Ray worker node (run it with the project's venv active). Environment:
  RAY_AUTH_TOKEN_PATH  the head's token file (default ~/.ray/auth_token); or RAY_AUTH_TOKEN
  NUM_CPUS, NUM_GPUS   what this node offers to trials (default: what Ray detects)
  NODE_IP              address to advertise (default: Ray's choice)
  JOIN_TIMEOUT         seconds to wait for the head (default 60)
  HARNESS_DATA_DIR     only where the shared filesystem is mounted elsewhere than on the driver:
                       this node's path to the driver's <output_dir>/_data
  HARNESS_TRACKING_OUTAGE_S  seconds this node's trials wait for a tracking server that does not
                       answer (default 60; give the driver the same)
USAGE
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
if [[ $# -gt 1 ]]; then usage >&2; exit 2; fi
HEAD_ADDRESS=${1:-${HEAD_ADDRESS:-}}
if [[ -z $HEAD_ADDRESS ]]; then usage >&2; exit 2; fi
command -v ray >/dev/null || { echo "error: 'ray' not on PATH; activate the project's venv first" >&2; exit 2; }

# A node joining by address never switches auth on by itself, even with a token at hand.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  if [[ ! -s $RAY_AUTH_TOKEN_PATH ]]; then
    echo "error: no Ray token at $RAY_AUTH_TOKEN_PATH; use the head's (set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)" >&2
    exit 2
  fi
fi

args=(--address "$HEAD_ADDRESS")
if [[ -n ${NUM_CPUS:-} ]]; then args+=(--num-cpus "$NUM_CPUS"); fi
if [[ -n ${NUM_GPUS:-} ]]; then args+=(--num-gpus "$NUM_GPUS"); fi
if [[ -n ${NODE_IP:-} ]]; then args+=(--node-ip-address "$NODE_IP"); fi

export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
if [[ ${NODE_IP:-} == 127.0.0.1 ]]; then export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; fi

# Trials are processes of this node's raylet and inherit its environment, HARNESS_* included.
# `ray start` retries an unreachable head for minutes, printing only warnings: bound the wait.
wait=${JOIN_TIMEOUT:-60}
if ! timeout "$wait" ray start "${args[@]}" >"${TMPDIR:-/tmp}/ray-start-worker.log" 2>&1; then
  echo "error: could not join the Ray head at $HEAD_ADDRESS within ${wait} s (is it up, reachable, and is this the head's token?); see ${TMPDIR:-/tmp}/ray-start-worker.log" >&2
  exit 1
fi
tail -n 3 "${TMPDIR:-/tmp}/ray-start-worker.log"
