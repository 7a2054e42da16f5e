#!/usr/bin/env bash
# Python libraries no one here wrote, for the Avro interop tests
# (tests/interop/interop.py): fastavro and confluent-kafka; and the
# Prometheus project's text-format parser for the metrics tests
# (tests/http/metrics.py); pinned, in a virtual environment of their own.
#
#   interop.sh python     install if missing; print the interpreter's path
set -euo pipefail
INTEROP_HOME=${INTEROP_HOME:-/var/tmp/gpuledger-interop}
PACKAGES=(fastavro==1.10.0 confluent-kafka==2.6.1 prometheus-client==0.26.0)

python_path() {
  local python="$INTEROP_HOME/venv/bin/python"
  if ! "$python" -c 'import fastavro, confluent_kafka, prometheus_client' 2>/dev/null; then
    echo "installing ${PACKAGES[*]} into $INTEROP_HOME" >&2
    mkdir -p "$INTEROP_HOME"
    python3 -m venv "$INTEROP_HOME/venv"
    "$INTEROP_HOME/venv/bin/pip" install --quiet "${PACKAGES[@]}" >&2
  fi
  echo "$python"
}

case "${1:-}" in
  python) python_path ;;
  *) echo "usage: $0 python" >&2; exit 2 ;;
esac
