#!/usr/bin/env bash
# Stop the cluster start-cluster.sh started for a state folder (docs/cluster.md, "Several hosts on
# one machine"): every process, namespace and link it made, and nothing else. A thin wrapper around
# `python -m tools.netns_cluster down`.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: deploy/netns/stop-cluster.sh --state DIR [--timeout SECONDS]

Stops the cluster that deploy/netns/start-cluster.sh --state DIR started and waits until its
processes, namespaces and links are gone (default: up to 60 s). A folder with no running cluster
is said in one line, exit 0. Environment: HARNESS_VENV, the project's venv (default: this
checkout's .venv).
USAGE
}

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then usage; exit 0; fi
done
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
[[ $(id -u) == 0 ]] || { echo "error: network namespaces need root" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${HARNESS_VENV:-$repo/.venv}/bin/python
[[ -x $python ]] || { echo "error: no venv at ${HARNESS_VENV:-$repo/.venv} (or set HARNESS_VENV)" >&2; exit 2; }
cd "$repo"
exec "$python" -m tools.netns_cluster down "$@"
