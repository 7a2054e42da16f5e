#!/usr/bin/env bash
# make demo-batch: the Philly-derived workload folded in batch mode (no
# broker), audited, and summed up per start-up. Usage: demo-batch.sh BIN TRACE DIR
set -euo pipefail
bin=$1 trace=$2 dir=$3

if [ ! -f "$trace" ]; then
  echo "error: the Philly trace is not at $trace (set TRACE=...)" >&2
  exit 1
fi
rm -rf "$dir/out" "$dir/state"
mkdir -p "$dir"
echo "== generating the workload from the Philly GPU trace (Jeon et al., USENIX ATC '19, CC-BY-4.0)"
"$bin" gen --trace "$trace" --out "$dir/workload"
echo "== folding it in batch mode (RocksDB state in $dir/state)"
"$bin" fold --rates "$dir/workload/rates.jsonl" --deals "$dir/workload/deals.jsonl" \
  --metering "$dir/workload/metering.jsonl" --out "$dir/out" --state-dir "$dir/state"
echo "== auditing the outputs (spec §11)"
"$bin" audit "$dir/out"
echo "== balances per start-up (USD, whole dollars)"
"$bin" table "$dir/out/balances.json"
echo
echo "outputs: $dir/out (usage-rated, journal, statements, alerts, dead-letter .jsonl; balances.json)"
