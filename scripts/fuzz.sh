#!/usr/bin/env bash
# Coverage-guided fuzzing of the decoders and the fold with cargo-afl, on
# stable Rust (fuzz/). Each target runs for SECONDS from its seed corpus
# (fuzz/corpus/<target>); any crash fails the run and is kept in
# $FUZZ_OUT/<target>/default/crashes to become a regression test.
#
#   scripts/fuzz.sh SECONDS [TARGET...]     (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(json_decoder avro_single_object avro_confluent canonical_digest fold)
fi
# Its own target directory: cargo-afl instruments with other flags than the
# main build, and the fuzz crate builds without Kafka or RocksDB.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/tmp/gpuledger-fuzz-target}
out=${FUZZ_OUT:-/var/tmp/gpuledger-fuzz}
afl_version=0.18.2

if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-afl $afl_version (once)" >&2
    cargo install cargo-afl --locked --version "$afl_version" >&2
fi
# AFL++ itself, built once per toolchain ("already built" is not an error).
mkdir -p "$out"
if ! cargo afl config --build >"$out/afl-config.log" 2>&1; then
    grep -q "already built" "$out/afl-config.log" || { cat "$out/afl-config.log" >&2; exit 1; }
fi
(cd fuzz && cargo afl build --release --locked >&2)

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1
failed=0
for target in "${targets[@]}"; do
    rm -rf "${out:?}/$target"
    mkdir -p "$out"
    cargo afl fuzz -V "$seconds" -i "fuzz/corpus/$target" -o "$out/$target" \
        "$CARGO_TARGET_DIR/release/$target" >"$out/$target.log" 2>&1 || true
    stats="$out/$target/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
        echo "fuzz: $target did not start; see $out/$target.log" >&2
        tail -20 "$out/$target.log" >&2
        failed=1
        continue
    fi
    field() { awk -F' *: *' -v name="$1" '$1 == name { print $2 }' "$stats"; }
    crashes=$(find "$out/$target/default/crashes" -name 'id:*' 2>/dev/null | wc -l)
    hangs=$(find "$out/$target/default/hangs" -name 'id:*' 2>/dev/null | wc -l)
    printf 'fuzz: %-20s %6ss  execs %10s  (%s/s)  corpus %5s  edges %s  crashes %s  hangs %s\n' \
        "$target" "$(field run_time)" "$(field execs_done)" "$(field execs_per_sec)" \
        "$(field corpus_count)" "$(field edges_found)" "$crashes" "$hangs"
    if [ "$crashes" -gt 0 ]; then
        echo "fuzz: $target crashed; inputs in $out/$target/default/crashes" >&2
        failed=1
    fi
done
exit $failed
