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
# fold_once DIR RUN: one fold of DIR/workload into DIR/out with a fresh
# DIR/state; prints its wall seconds.
fold_once() {
  local at=$1 run=$2 start end
  rm -rf "$at/out" "$at/state"
  start=$(date +%s.%N)
  "$bin" fold --rates "$at/workload/rates.jsonl" --deals "$at/workload/deals.jsonl" \
    --metering "$at/workload/metering.jsonl" --out "$at/out" --state-dir "$at/state" >"$at/run-$run.txt" 2>"$at/run-$run.log"
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
results=()
record_results=()
for run in $(seq 1 "$runs"); do
  seconds=$(fold_once "$dir" "$run")
  usage=$(grep -o '[0-9]* usage accepted' "$dir/run-$run.txt" | cut -d' ' -f1)
  printf 'run %d: %.2f s, %.0f records/s, %.0f usage events/s\n' "$run" "$seconds" \
    "$(echo "$records / $seconds" | bc -l)" "$(echo "$usage / $seconds" | bc -l)"
  results+=("$(echo "$usage / $seconds" | bc -l)")
  record_results+=("$(echo "$records / $seconds" | bc -l)")
done
median=$(printf '%s\n' "${results[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'median of %d runs: %.0f usage events/s (%d records, %s usage events accepted), machine: %s cores, %s\n' \
  "$runs" "$median" "$records" "$usage" "$(nproc)" "$(free -h | awk '/Mem:/ {print $2}') RAM"

# One start-up with 20,000 grants and 20,000 usage events: its cost per
# record must not grow with its history (burn-down index, running totals,
# commits that write only what changed). Same binary, same runs.
many="$dir/many-grants"
python3 "$(dirname "$0")/gen-many-grants.py" "$many/workload" "${MANY_GRANTS:-20000}"
many_records=$(cat "$many/workload/"{rates,deals,metering}.jsonl | wc -l)
many_results=()
for run in $(seq 1 "$runs"); do
  seconds=$(fold_once "$many" "$run")
  printf 'many grants, run %d: %.2f s, %.0f records/s\n' "$run" "$seconds" "$(echo "$many_records / $seconds" | bc -l)"
  many_results+=("$(echo "$many_records / $seconds" | bc -l)")
done
many_median=$(printf '%s\n' "${many_results[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
all_median=$(printf '%s\n' "${record_results[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'one start-up with %d grants: median %.0f records/s (%d records), %.2fx the Philly workload'"'"'s median %.0f records/s\n' \
  "${MANY_GRANTS:-20000}" "$many_median" "$many_records" "$(echo "$all_median / $many_median" | bc -l)" "$all_median"
