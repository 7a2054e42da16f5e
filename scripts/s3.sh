#!/usr/bin/env bash
# A local S3-compatible server for the checkpoint tests and the demo:
# moto's server mode (PyPI moto[server]), in memory, in a virtual
# environment of its own.
#
#   s3.sh install              install into $S3_HOME (idempotent)
#   s3.sh start DIR BUCKET     start on a free loopback port with BUCKET
#                              created; prints the endpoint URL; DIR/pid
#   s3.sh stop DIR             stop the server started in DIR
#
# Clients reach it with any access key (moto does not check signatures'
# secrets): gpuledger takes `[checkpoints.options] endpoint = URL`,
# `allow_http = "true"`, `region`, `access_key_id`, `secret_access_key`.
set -euo pipefail
S3_HOME=${S3_HOME:-/var/tmp/gpuledger-s3}
PACKAGE='moto[server]==5.2.5'

install() {
  if "$S3_HOME/venv/bin/python" -c 'import moto.server' 2>/dev/null; then return 0; fi
  # One installer at a time (tests start servers in parallel).
  mkdir -p "$(dirname "$S3_HOME")"
  exec 9>"$S3_HOME.lock"
  flock 9
  if "$S3_HOME/venv/bin/python" -c 'import moto.server' 2>/dev/null; then return 0; fi
  echo "installing $PACKAGE into $S3_HOME" >&2
  mkdir -p "$S3_HOME"
  python3 -m venv "$S3_HOME/venv"
  "$S3_HOME/venv/bin/pip" install --quiet "$PACKAGE" >&2
}

start() {
  local dir=$1 bucket=$2
  install
  mkdir -p "$dir"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  "$S3_HOME/venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/s3.log" 2>&1 &
  echo $! >"$dir/pid"
  local endpoint="http://127.0.0.1:$port"
  # Until it answers (bounded: 30 s), then create the bucket.
  for _ in $(seq 1 300); do
    if "$S3_HOME/venv/bin/python" - "$endpoint" "$bucket" <<'PY' 2>/dev/null; then
import sys, urllib.request
request = urllib.request.Request(f"{sys.argv[1]}/{sys.argv[2]}", method="PUT")
urllib.request.urlopen(request, timeout=1)
PY
      echo "$endpoint"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "error: moto_server exited; see $dir/s3.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: moto_server did not answer on $endpoint within 30 s; see $dir/s3.log" >&2
  exit 1
}

stop() {
  local dir=$1
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: $0 start DIR BUCKET}" "${3:?usage: $0 start DIR BUCKET}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 install | start DIR BUCKET | stop DIR" >&2; exit 2 ;;
esac
