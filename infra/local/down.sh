#!/usr/bin/env bash
# Stop the local stack started by infra/local/up.sh: every process by PID (PID files, Ray's daemons found by the
# stack's unique temp-dir path, and all their descendants, e.g. Ray workers and MLflow's server workers).
# Never `ray stop` (that would stop every Ray on this host). Idempotent.
#   infra/local/down.sh           stop; keep secrets, the MLflow database and logs for the next up.sh
#   infra/local/down.sh --purge   stop and delete the state directory
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${TIN_STACK_STATE:-$HERE/.state}"
PYTHON="${TIN_STACK_PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

if [[ ! -d "$STATE" ]]; then
    echo "[down] nothing to stop: no state directory at $STATE"
    exit 0
fi
STATE="$(cd "$STATE" && pwd)"
RAY_TMP=""
[[ -s "$STATE/ray_tmp_dir" ]] && RAY_TMP="$(cat "$STATE/ray_tmp_dir")"

status=0
"$PYTHON" "$HERE/stack.py" stop "$STATE" ${RAY_TMP:+--ray-tmp "$RAY_TMP"} | sed 's/^/[down] /' || status=1
rm -f "$STATE"/pids/*.pid "$STATE"/pids/*.pids "$STATE/env.sh"

if [[ "${1:-}" == "--purge" ]]; then
    rm -rf "$STATE"
    [[ -n "$RAY_TMP" && "$RAY_TMP" == /tmp/tin-stack-* ]] && rm -rf "$RAY_TMP"
    echo "[down] removed $STATE"
fi
exit "$status"
