#!/usr/bin/env bash
# Start the local stack on this machine, every service bound to 127.0.0.1 only:
#   moto S3 server (+ bucket), MLflow tracking server (sqlite + S3 artifacts on moto, basic auth),
#   a Ray head and a second Ray worker node, both with token authentication.
# Idempotent: services already running (by PID file) are left alone; secrets are generated once and reused.
# Writes $TIN_STACK_STATE/env.sh (source it). Stop with infra/local/down.sh. See infra/local/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${TIN_STACK_STATE:-$HERE/.state}"
mkdir -p "$STATE"
chmod 700 "$STATE"
STATE="$(cd "$STATE" && pwd)"
PYTHON="${TIN_STACK_PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"
BIN="$(dirname "$PYTHON")"
HELPER=("$PYTHON" "$HERE/stack.py")

# Ports: all derived from one base (non-default, so a stock `ray start` on 6379/8265 does not clash); each of the
# four public ones can be set on its own.
BASE="${TIN_STACK_PORT_BASE:-19100}"
S3_PORT="${TIN_STACK_S3_PORT:-$BASE}"
MLFLOW_PORT="${TIN_STACK_MLFLOW_PORT:-$((BASE + 1))}"
RAY_PORT="${TIN_STACK_RAY_PORT:-$((BASE + 2))}"
DASHBOARD_PORT="${TIN_STACK_DASHBOARD_PORT:-$((BASE + 3))}"
RAY_CLIENT_PORT="$((BASE + 4))"
HEAD_PORT0="$((BASE + 10))"      # head: node manager, object manager, metrics, agent http/grpc, runtime env agent
WORKER_PORT0="$((BASE + 20))"    # worker node: the same six
HEAD_WORKERS_MIN="$((BASE + 100))"; HEAD_WORKERS_MAX="$((BASE + 199))"
NODE_WORKERS_MIN="$((BASE + 200))"; NODE_WORKERS_MAX="$((BASE + 299))"
BUCKET="${TIN_STACK_BUCKET:-tin-local}"
OBJECT_STORE_BYTES="${TIN_STACK_OBJECT_STORE_BYTES:-536870912}"
HEAD_CPUS="${TIN_STACK_HEAD_CPUS:-1}"
WORKER_CPUS="${TIN_STACK_WORKER_CPUS:-1}"

# Ray's Unix sockets live under its temp dir and a socket path may not exceed 107 bytes: Ray adds ~66 characters
# (~69 on the worker node, whose temp dir is $RAY_TMP/n2).
RAY_TMP="$STATE/ray"
if (( ${#RAY_TMP} > 37 )); then
    RAY_TMP="/tmp/tin-stack-$(printf '%s' "$STATE" | sha1sum | cut -c1-12)"
fi
mkdir -p "$STATE"/{pids,logs,secrets,mlflow} "$RAY_TMP"
[[ -f "$STATE/.gitignore" ]] || printf '# local stack state: secrets, PIDs, logs\n*\n' >"$STATE/.gitignore"
chmod 700 "$STATE/secrets"
printf '%s\n' "$RAY_TMP" >"$STATE/ray_tmp_dir"
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS

log() { printf '[up] %s\n' "$*"; }
alive() { "${HELPER[@]}" alive "$STATE" "$1"; }

# --- secrets (generated once, mode 600) ---------------------------------------------------------------------------
"${HELPER[@]}" secret "$STATE/secrets/ray_token" --bytes 32
"${HELPER[@]}" secret "$STATE/secrets/mlflow_admin_password" --bytes 24
"${HELPER[@]}" secret "$STATE/secrets/mlflow_flask_secret" --bytes 32
"${HELPER[@]}" secret "$STATE/secrets/aws_secret_access_key" --bytes 20
if [[ ! -s "$STATE/secrets/aws_access_key_id" ]]; then  # moto accepts any key pair; these are per-stack anyway
    (umask 077; printf 'TINLOCAL%s\n' "$(head -c6 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)" \
        >"$STATE/secrets/aws_access_key_id")
fi
chmod 600 "$STATE"/secrets/*
MLFLOW_USER="admin"
MLFLOW_PASSWORD="$(cat "$STATE/secrets/mlflow_admin_password")"
AUTH_INI="$STATE/secrets/mlflow-auth.ini"
if [[ ! -s "$AUTH_INI" ]]; then
    rm -f "$STATE/mlflow/basic_auth.db"  # an old user store would keep an old admin password
    (umask 077; cat >"$AUTH_INI" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$STATE/mlflow/basic_auth.db
admin_username = $MLFLOW_USER
admin_password = $MLFLOW_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
EOF
    )
fi
chmod 600 "$AUTH_INI"

# The services and everything started on Ray (jobs, workers) see the stack through the standard variables.
export AWS_ACCESS_KEY_ID; AWS_ACCESS_KEY_ID="$(cat "$STATE/secrets/aws_access_key_id")"
export AWS_SECRET_ACCESS_KEY; AWS_SECRET_ACCESS_KEY="$(cat "$STATE/secrets/aws_secret_access_key")"
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export MLFLOW_TRACKING_USERNAME="$MLFLOW_USER" MLFLOW_TRACKING_PASSWORD="$MLFLOW_PASSWORD"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/secrets/ray_token"
export RAY_USAGE_STATS_ENABLED=0
# Fixed Prometheus ports of the autoscaler monitor and the dashboard (defaults 44217/44227) moved next to ours.
export AUTOSCALER_METRIC_PORT="$((BASE + 5))" DASHBOARD_METRIC_PORT="$((BASE + 6))"
# `python` in a job's entrypoint is the interpreter the Ray nodes find on PATH: this venv's.
export PATH="$BIN:$PATH"
unset RAY_AUTH_TOKEN  # the token comes from RAY_AUTH_TOKEN_PATH, so it is not copied into every process environment

# --- (a) moto S3 --------------------------------------------------------------------------------------------------
if alive moto; then
    log "moto S3 already running on 127.0.0.1:$S3_PORT"
else
    log "starting moto S3 on 127.0.0.1:$S3_PORT"
    setsid "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" </dev/null >>"$STATE/logs/moto.log" 2>&1 &
    "${HELPER[@]}" record-pid "$!" moto_server "$STATE/pids/moto.pid"
fi
"${HELPER[@]}" wait-http "http://127.0.0.1:$S3_PORT/" --timeout 60 --pidfile "$STATE/pids/moto.pid" \
    || { tail -n 30 "$STATE/logs/moto.log" >&2; exit 1; }
"${HELPER[@]}" make-bucket "http://127.0.0.1:$S3_PORT" "$BUCKET"

# --- (b) MLflow (started now, waited for after Ray: its ~20 s start overlaps Ray's) -----------------------------------
if alive mlflow; then
    log "MLflow already running on 127.0.0.1:$MLFLOW_PORT"
else
    log "starting MLflow on 127.0.0.1:$MLFLOW_PORT (basic auth, artifacts in s3://$BUCKET/mlflow)"
    MLFLOW_AUTH_CONFIG_PATH="$AUTH_INI" \
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$STATE/secrets/mlflow_flask_secret")" \
        setsid "$BIN/mlflow" server \
            --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" \
            --artifacts-destination "s3://$BUCKET/mlflow" \
            --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
            --app-name basic-auth \
            </dev/null >>"$STATE/logs/mlflow.log" 2>&1 &
    "${HELPER[@]}" record-pid "$!" mlflow "$STATE/pids/mlflow.pid"
fi

# --- (c) Ray head + one worker node ---------------------------------------------------------------------------------
ray_ports() {  # six consecutive ports from $1
    local p0="$1"
    echo --node-manager-port "$p0" --object-manager-port "$((p0 + 1))" --metrics-export-port "$((p0 + 2))" \
        --dashboard-agent-listen-port "$((p0 + 3))" --dashboard-agent-grpc-port "$((p0 + 4))" \
        --runtime-env-agent-port "$((p0 + 5))"
}
ray_node_running() {  # a raylet with this node-manager port under our temp dir
    "$PYTHON" - "$RAY_TMP" "$1" <<'EOF'
import sys, psutil
tmp, port = sys.argv[1], f"--node_manager_port={sys.argv[2]}"
for p in psutil.process_iter():
    try:
        line = " ".join(p.cmdline())
    except psutil.Error:
        continue
    if tmp in line and port in line and "raylet" in p.name():
        sys.exit(0)
sys.exit(1)
EOF
}

if ray_node_running "$HEAD_PORT0"; then
    log "Ray head already running (GCS 127.0.0.1:$RAY_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT)"
else
    log "starting Ray head (GCS 127.0.0.1:$RAY_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT, token auth)"
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: "localhost" stays 127.0.0.1 (see ray_loopback_start.py), so the GCS and the
    # raylet bind 127.0.0.1 instead of every interface.
    # shellcheck disable=SC2046
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 setsid --wait "$BIN/ray" start --head \
        --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$RAY_CLIENT_PORT" \
        $(ray_ports "$HEAD_PORT0") --min-worker-port "$HEAD_WORKERS_MIN" --max-worker-port "$HEAD_WORKERS_MAX" \
        --temp-dir "$RAY_TMP" --num-cpus "$HEAD_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
        --disable-usage-stats </dev/null >>"$STATE/logs/ray-head.log" 2>&1 \
        || { tail -n 30 "$STATE/logs/ray-head.log" >&2; exit 1; }
fi

if ray_node_running "$WORKER_PORT0"; then
    log "Ray worker node already running"
else
    log "starting Ray worker node"
    # Its own temp dir (inside ours, so down.sh finds its processes): nodes sharing one would share one
    # runtime_resources dir, and each node's runtime-env agent re-unpacking a job's working_dir there pulls the
    # directory from under a running job's driver (its cwd vanishes).
    # shellcheck disable=SC2046
    setsid --wait "$PYTHON" "$HERE/ray_loopback_start.py" --address "127.0.0.1:$RAY_PORT" \
        $(ray_ports "$WORKER_PORT0") --min-worker-port "$NODE_WORKERS_MIN" --max-worker-port "$NODE_WORKERS_MAX" \
        --temp-dir "$RAY_TMP/n2" --num-cpus "$WORKER_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
        --disable-usage-stats </dev/null >>"$STATE/logs/ray-worker.log" 2>&1 \
        || { tail -n 30 "$STATE/logs/ray-worker.log" >&2; exit 1; }
fi
"${HELPER[@]}" record-ray "$STATE" "$RAY_TMP"

"${HELPER[@]}" wait-http "http://127.0.0.1:$MLFLOW_PORT/health" --timeout 120 --pidfile "$STATE/pids/mlflow.pid" \
    || { tail -n 30 "$STATE/logs/mlflow.log" >&2; exit 1; }

# --- env.sh -------------------------------------------------------------------------------------------------------
(umask 077; cat >"$STATE/env.sh" <<EOF
# Generated by infra/local/up.sh: point Ray job submission, boto3/s3fs/pyarrow and MLflow at the local stack.
#   . $STATE/env.sh
# Holds credentials (mode 600); regenerate with up.sh, stop the stack with down.sh.
export TIN_STACK_STATE='$STATE'
# Ray: \`ray job submit\` talks to the dashboard's Jobs API (RAY_API_SERVER_ADDRESS wins over --address);
# ray.init()/\`ray status\` use the GCS address. Both need the token.
export RAY_API_SERVER_ADDRESS='http://127.0.0.1:$DASHBOARD_PORT'
export RAY_ADDRESS='127.0.0.1:$RAY_PORT'
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN='$(cat "$STATE/secrets/ray_token")'
# Keep 127.0.0.1 as 127.0.0.1 when a driver connects (Ray otherwise rewrites it to the host's network IP).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# S3 (moto): boto3, s3fs and pyarrow read these.
export AWS_ENDPOINT_URL='$AWS_ENDPOINT_URL'
export MLFLOW_S3_ENDPOINT_URL='$AWS_ENDPOINT_URL'
export AWS_ACCESS_KEY_ID='$AWS_ACCESS_KEY_ID'
export AWS_SECRET_ACCESS_KEY='$AWS_SECRET_ACCESS_KEY'
export AWS_DEFAULT_REGION='$AWS_DEFAULT_REGION'
export AWS_EC2_METADATA_DISABLED=true
export TIN_STACK_BUCKET='$BUCKET'
# MLflow (basic auth).
export MLFLOW_TRACKING_URI='$MLFLOW_TRACKING_URI'
export MLFLOW_TRACKING_USERNAME='$MLFLOW_USER'
export MLFLOW_TRACKING_PASSWORD='$MLFLOW_PASSWORD'
EOF
)
chmod 600 "$STATE/env.sh"

log "stack is up: S3 http://127.0.0.1:$S3_PORT (bucket $BUCKET), MLflow http://127.0.0.1:$MLFLOW_PORT,"
log "  Ray GCS 127.0.0.1:$RAY_PORT, Ray dashboard/Jobs API http://127.0.0.1:$DASHBOARD_PORT"
log "use it: . $STATE/env.sh"
