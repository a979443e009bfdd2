#!/usr/bin/env bash
# Start a local Azurite (Azure Blob Storage emulator) for the Blob adapter tests.
#
# Usage: bash .ci/start-azurite.sh
#
# - Installs Azurite 3 with npm into .ci/node/node_modules if it is not there yet
#   (npm install --no-save; that folder must stay out of git).
# - Telemetry is disabled (--disableTelemetry): the tests must not reach out to the internet.
# - Idempotent: if something already answers on the blob port, it starts nothing.
# - Otherwise starts `azurite-blob` in the background with its data in a temporary
#   folder, writes its pid to $AZURITE_PID_FILE, waits (up to 60 s) until the port
#   answers, and prints the connection string on stdout. Progress goes to stderr.
# - Exports nothing. The tests (tests/adapters/conftest.py) read AZURITE_BLOB_URL
#   (default http://127.0.0.1:10000/devstoreaccount1) and start this script
#   themselves when nothing answers there.
# - Stop it with: kill "$(cat "$AZURITE_PID_FILE")"
#
# Optional environment:
#   AZURITE_BLOB_HOST   host to listen on       (default 127.0.0.1)
#   AZURITE_BLOB_PORT   blob port               (default 10000)
#   AZURITE_STATE_DIR   data, log and pid file  (default $TMPDIR/fedsilo-azurite-<port>)
#   AZURITE_PID_FILE    pid file                (default $AZURITE_STATE_DIR/azurite.pid)
#   AZURITE_NODE_PREFIX npm prefix for Azurite  (default <repo>/.ci/node)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
host="${AZURITE_BLOB_HOST:-127.0.0.1}"
port="${AZURITE_BLOB_PORT:-10000}"
state_dir="${AZURITE_STATE_DIR:-${TMPDIR:-/tmp}/fedsilo-azurite-${port}}"
pid_file="${AZURITE_PID_FILE:-${state_dir}/azurite.pid}"
node_prefix="${AZURITE_NODE_PREFIX:-${repo_root}/.ci/node}"
azurite_bin="${node_prefix}/node_modules/.bin/azurite-blob"
log_file="${state_dir}/azurite.log"
wait_seconds=60

# The well-known Azurite development account (public, documented by Microsoft).
account="devstoreaccount1"
account_key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

log() { echo "start-azurite: $*" >&2; }

print_connection_string() {
    echo "DefaultEndpointsProtocol=http;AccountName=${account};AccountKey=${account_key};BlobEndpoint=http://${host}:${port}/${account};"
}

port_open() {
    # bash's /dev/tcp: succeeds as soon as something accepts a connection.
    (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null
}

if port_open; then
    log "something already listens on ${host}:${port}; starting nothing"
    print_connection_string
    exit 0
fi

if [[ ! -x "${azurite_bin}" ]]; then
    command -v npm >/dev/null 2>&1 || {
        log "npm not found: install Node.js (>= 18) and npm, then re-run"
        exit 1
    }
    log "installing azurite@3 into ${node_prefix}/node_modules (one time)"
    mkdir -p "${node_prefix}"
    npm install --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
        --prefix "${node_prefix}" "azurite@3" >&2
    [[ -x "${azurite_bin}" ]] || {
        log "npm finished but ${azurite_bin} is missing"
        exit 1
    }
fi

mkdir -p "${state_dir}/data"
log "starting azurite-blob on ${host}:${port} (data: ${state_dir}/data, log: ${log_file})"
nohup "${azurite_bin}" \
    --blobHost "${host}" --blobPort "${port}" \
    --location "${state_dir}/data" \
    --skipApiVersionCheck --loose --disableTelemetry \
    >"${log_file}" 2>&1 </dev/null &
pid=$!
mkdir -p "$(dirname "${pid_file}")"
echo "${pid}" >"${pid_file}"

for ((i = 0; i < wait_seconds * 4; i++)); do
    if port_open; then
        log "azurite-blob is up (pid ${pid}, pid file ${pid_file})"
        print_connection_string
        exit 0
    fi
    if ! kill -0 "${pid}" 2>/dev/null; then
        log "azurite-blob exited before it listened; last lines of ${log_file}:"
        tail -n 20 "${log_file}" >&2 || true
        rm -f "${pid_file}"
        exit 1
    fi
    sleep 0.25
done

log "azurite-blob did not answer on ${host}:${port} within ${wait_seconds}s; stopping pid ${pid}"
tail -n 20 "${log_file}" >&2 || true
kill "${pid}" 2>/dev/null || true
rm -f "${pid_file}"
exit 1
