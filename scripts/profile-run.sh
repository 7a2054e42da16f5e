#!/usr/bin/env bash
# make profile: where `gpuledger run` (catch-up, exactly-once) spends its CPU.
# Loads the Philly-derived workload (first JOBS jobs, default all) into a
# fresh local broker, runs the processor from offset 0 until caught up under
# `perf record` (flat, 499 Hz), and writes the top symbols and shared
# objects to DIR/profile.txt. The broker's own CPU is not in the profile.
#   profile-run.sh BIN TRACE DIR
set -euo pipefail
bin=$1 trace=$2 dir=$3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
export GPULEDGER_LOG=${GPULEDGER_LOG:-warn}
jobs_arg=()
if [[ -n "${JOBS:-}" ]]; then jobs_arg=(--jobs "$JOBS"); fi
echo "== workload (Philly GPU trace, Jeon et al., USENIX ATC '19, CC-BY-4.0)"
"$bin" gen --trace "$trace" --out "$dir/workload" "${jobs_arg[@]}"
"$here/broker.sh" stop "$dir/broker" 2>/dev/null || true
rm -rf "$dir/broker" "$dir/state"
address=$("$here/broker.sh" start "$dir/broker")
trap '"$here/broker.sh" stop "$dir/broker"' EXIT
"$bin" topics create --bootstrap-servers "$address" --partitions 4 >/dev/null
"$bin" produce --bootstrap-servers "$address" --rates "$dir/workload/rates.jsonl" \
  --deals "$dir/workload/deals.jsonl" --metering "$dir/workload/metering.jsonl"
start=$(date +%s.%N)
perf record -F 499 -o "$dir/perf.data" -- "$bin" run --bootstrap-servers "$address" \
  --state-dir "$dir/state" --exit-when-caught-up 2>"$dir/perf-record.log"
end=$(date +%s.%N)
printf 'catch-up under perf: %.1f s\n' "$(echo "$end - $start" | bc -l)"
perf report -i "$dir/perf.data" --stdio --sort dso >"$dir/report-dso.txt" 2>/dev/null
perf report -i "$dir/perf.data" --stdio --sort symbol >"$dir/report-symbol.txt" 2>/dev/null
top() { awk -v most="$2" '!/^#/ && NF && n < most {print; n++}' "$1"; }
{
  echo "# perf report --sort dso (self time)"
  top "$dir/report-dso.txt" 15
  echo
  echo "# perf report --sort symbol (self time, top 40)"
  top "$dir/report-symbol.txt" 40
} >"$dir/profile.txt"
cat "$dir/profile.txt"
