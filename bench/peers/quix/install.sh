#!/usr/bin/env bash
# Installs Quix Streams for the peer into $QUIX_HOME (idempotent); prints the python path.
set -euo pipefail
QUIX_HOME=${QUIX_HOME:-/var/tmp/gpuledger-quix}
if ! "$QUIX_HOME/bin/python" -c 'import quixstreams' 2>/dev/null; then
  echo "installing quixstreams 3.28.1 into $QUIX_HOME" >&2
  python3 -m venv "$QUIX_HOME"
  "$QUIX_HOME/bin/pip" install --quiet quixstreams==3.28.1
fi
echo "$QUIX_HOME/bin/python"
