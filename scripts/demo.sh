#!/usr/bin/env bash
# make demo: the Philly-derived workload through the live processor.
# Starts the local broker, creates the topics, produces the workload, runs
# `gpuledger run` until it has caught up, reads the balances topic back and
# prints a per-start-up table; then stops what it started.
# Usage: demo.sh BIN TRACE DIR
set -euo pipefail
bin=$1 trace=$2 dir=$3
here=$(cd "$(dirname "$0")" && pwd)

if [ ! -f "$trace" ]; then
  echo "error: the Philly trace is not at $trace (set TRACE=...)" >&2
  exit 1
fi
rm -rf "$dir/state" "$dir/out" "$dir/broker"
mkdir -p "$dir"
trap '"$here/broker.sh" stop "$dir/broker"' EXIT

echo "== generating the workload from the Philly GPU trace (Jeon et al., USENIX ATC '19, CC-BY-4.0)"
"$bin" gen --trace "$trace" --out "$dir/workload"
echo "== starting the local Kafka-API broker (Tansu)"
address=$("$here/broker.sh" start "$dir/broker")
echo "broker at $address"
echo "== creating topics (4 partitions)"
"$bin" topics create --bootstrap-servers "$address" --partitions 4
echo "== producing the workload"
"$bin" produce --bootstrap-servers "$address" --rates "$dir/workload/rates.jsonl" \
  --deals "$dir/workload/deals.jsonl" --metering "$dir/workload/metering.jsonl"
echo "== running the processor until it has caught up (exactly-once, RocksDB state in $dir/state)"
GPULEDGER_LOG=${GPULEDGER_LOG:-info} "$bin" run --bootstrap-servers "$address" --state-dir "$dir/state" --exit-when-caught-up
echo "== reading the balances topic back"
"$bin" export --bootstrap-servers "$address" --out "$dir/out" --topics balances
echo "== balances per start-up (USD, whole dollars)"
"$bin" table "$dir/out/balances.json"
