#!/usr/bin/env bash
# Start a cluster of several hosts on this one machine, each host in its own network namespace
# (docs/cluster.md, "Several hosts on one machine"). A thin wrapper around
# `python -m tools.netns_cluster up`, which holds the cluster until stop-cluster.sh.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: deploy/netns/start-cluster.sh --state DIR [--workers N] [--worker-cpus C] [--worker-gpus G]
                                     [--head-cpus H] [--prefix P]

Starts, as root, a Ray head, N Ray workers, an MLflow server on PostgreSQL and a driver host, each
in its own network and PID namespace with its own address on 10.213.K.0/24 (one bridge between
them; nothing is added to the machine's own network). Returns once every service answers and
prints the addresses; the cluster runs until deploy/netns/stop-cluster.sh --state DIR.
  --state DIR        the cluster's folder: Ray token, PostgreSQL data, MLflow artifacts, logs/
  --workers N        Ray worker hosts (default 2)
  --worker-cpus C    CPUs each worker offers Ray (default 1)
  --worker-gpus G    GPUs each worker advertises (default 0; fake on a machine without them:
                     trials are scheduled as on a GPU cluster and train on the CPU)
  --head-cpus H      CPUs the head offers Ray (default 0: no trials on the head)
  --prefix P         namespace names P<K>-<host> (default hh)
Environment: HARNESS_VENV, the project's venv (default: this checkout's .venv); START_TIMEOUT,
seconds to wait for the cluster (default 300).
USAGE
}

state=""
args=("$@")
for ((i = 0; i < $#; i++)); do
  case ${args[i]} in
    -h | --help) usage; exit 0 ;;
    --state) state=${args[i + 1]:-} ;;
    --state=*) state=${args[i]#--state=} ;;
  esac
done
if [[ -z $state ]]; then usage >&2; exit 2; fi
[[ $(id -u) == 0 ]] || { echo "error: network namespaces need root" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${HARNESS_VENV:-$repo/.venv}/bin/python
[[ -x $python ]] || { echo "error: no venv at ${HARNESS_VENV:-$repo/.venv} (make test creates it; or set HARNESS_VENV)" >&2; exit 2; }
mkdir -p "$state"
state=$(cd "$state" && pwd)
if [[ -f $state/cluster.json ]]; then
  echo "error: a cluster already runs for $state (deploy/netns/stop-cluster.sh --state $state)" >&2
  exit 2
fi

# The holder runs on after this script, in a session of its own; its output goes to STATE/up.log.
cd "$repo"
PATH=$(dirname "$python"):$PATH setsid "$python" -m tools.netns_cluster up "$@" >"$state/up.log" 2>&1 </dev/null &
holder=$!
deadline=$((SECONDS + ${START_TIMEOUT:-300}))
until [[ -f $state/cluster.json ]]; do
  if ! kill -0 "$holder" 2>/dev/null || ((SECONDS > deadline)); then
    echo "error: the cluster did not start; $state/up.log ends:" >&2
    tail -n 20 "$state/up.log" >&2
    kill "$holder" 2>/dev/null || true
    exit 1
  fi
  sleep 1
done
cat "$state/up.log"
echo "run a command on a host: $python -m tools.netns_cluster exec --state $state driver -- COMMAND"
echo "stop it: deploy/netns/stop-cluster.sh --state $state"
