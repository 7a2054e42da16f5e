#!/usr/bin/env bash
# make bench-fold: batch-mode throughput of the fold with RocksDB state on the
# full Philly-derived workload; 3 runs, median reported. Usage:
#   bench-fold.sh BIN TRACE DIR        (RUNS=3 by default)
set -euo pipefail
bin=$1 trace=$2 dir=$3
runs=${RUNS:-3}
mkdir -p "$dir"
echo "== workload (Philly GPU trace, Jeon et al., USENIX ATC '19, CC-BY-4.0)"
"$bin" gen --trace "$trace" --out "$dir/workload"
records=$(cat "$dir/workload/"{rates,deals,metering}.jsonl | wc -l)
results=()
for run in $(seq 1 "$runs"); do
  rm -rf "$dir/out" "$dir/state"
  start=$(date +%s.%N)
  "$bin" fold --rates "$dir/workload/rates.jsonl" --deals "$dir/workload/deals.jsonl" \
    --metering "$dir/workload/metering.jsonl" --out "$dir/out" --state-dir "$dir/state" >"$dir/run-$run.txt" 2>"$dir/run-$run.log"
  end=$(date +%s.%N)
  seconds=$(echo "$end - $start" | bc -l)
  usage=$(grep -o '[0-9]* usage accepted' "$dir/run-$run.txt" | cut -d' ' -f1)
  printf 'run %d: %.2f s, %.0f records/s, %.0f usage events/s\n' "$run" "$seconds" \
    "$(echo "$records / $seconds" | bc -l)" "$(echo "$usage / $seconds" | bc -l)"
  results+=("$(echo "$usage / $seconds" | bc -l)")
done
median=$(printf '%s\n' "${results[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'median of %d runs: %.0f usage events/s (%d records, %s usage events accepted), machine: %s cores, %s\n' \
  "$runs" "$median" "$records" "$usage" "$(nproc)" "$(free -h | awk '/Mem:/ {print $2}') RAM"
