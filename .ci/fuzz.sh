#!/usr/bin/env bash
# Runs every fuzz target in proto/fuzz for a bounded time (issue 13) and
# fails if any of them finds a crash, a hang or runaway memory, printing the
# target and the path of the input that did it.
#
#   FUZZ_SECONDS    seconds per target (default 30); 0 builds the targets
#                   but runs none
#   FUZZ_TARGETS    space-separated targets to run (default: all of them)
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_JOBS       targets run at once (default: one per CPU); libFuzzer
#                   is single-threaded, so on a 2-core CI machine two at a
#                   time halve the wall time at the same seconds per target
#   FUZZ_INPUT_TIMEOUT, FUZZ_RSS_MB  limits on one input (10 s, 2048 MB)
#   FUZZ_LOG_DIR    where each target's libFuzzer log goes (default: a
#                   fresh temporary directory)
#
# Only the stable toolchain exists on a CI machine. cargo-fuzz passes
# nightly-only flags (-Zsanitizer, -Cpasses=sancov-module, ...);
# RUSTC_BOOTSTRAP=1 lets stable rustc accept them. The address sanitizer
# works on stable too: the x86_64-unknown-linux-gnu rust-std component
# ships its runtime (lib/rustlib/*/lib/librustc-stable_rt.asan.a), checked
# with rustc 1.95.0. Where that runtime is missing the script falls back to
# no sanitizer (still coverage-guided, panics and overflow checks caught),
# which also runs on stable and is about 9x faster (events: 1.1M exec/s
# against 125k). The decoders fuzzed here hold no unsafe code.
#
# Corpus: new inputs go to proto/fuzz/corpus/<target> (ignored by git, kept
# between local runs); the small hand-made seeds in proto/fuzz/seeds/<target>
# are read but never written. Crashes land in proto/fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
sanitizer=${FUZZ_SANITIZER:-address}
log_dir=${FUZZ_LOG_DIR:-$(mktemp -d -t totoro-fuzz.XXXXXX)}
mkdir -p "$log_dir"
# One input may take this long before libFuzzer calls it a hang, and the
# process this much memory before it is called a leak; both are reported
# as failures with the input saved, not waited out.
per_input_timeout=${FUZZ_INPUT_TIMEOUT:-10}
rss_limit_mb=${FUZZ_RSS_MB:-2048}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
# libfuzzer-sys compiles libFuzzer itself, which is C++.
if ! command -v c++ >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq g++
fi
# A toolchain without the sanitizer runtime would fail at link time; fuzz
# without ASAN there rather than not at all, and say so.
host=$(rustc -vV | sed -n 's/^host: //p')
if [ "$sanitizer" = address ] &&
    ! compgen -G "$(rustc --print sysroot)/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
    echo "fuzz: this toolchain ships no ASAN runtime for $host; fuzzing without a sanitizer"
    sanitizer=none
fi

export RUSTC_BOOTSTRAP=1
cd proto
# Release build with overflow checks and debug assertions (-a): an
# arithmetic overflow on hostile input is a finding too. It goes to
# proto/fuzz/target, apart from the workspace's target directory.
fuzz_flags=(--sanitizer "$sanitizer" --debug-assertions)
start=$SECONDS
cargo fuzz build "${fuzz_flags[@]}"
echo "fuzz: built all targets in $((SECONDS - start)) s (sanitizer: $sanitizer)"

if [ "$seconds" = 0 ]; then
    echo "fuzz: FUZZ_SECONDS=0, not running the targets"
    exit 0
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -ge 1 ] 2>/dev/null || jobs=1

# Runs one target; its exit status goes to $log_dir/<target>.status, its
# report is printed by `report` once every target has run.
run_one() {
    local target=$1 corpus=fuzz/corpus/$1 seeds=fuzz/seeds/$1 status=0
    mkdir -p "$corpus"
    local dirs=("$corpus")
    [ -d "$seeds" ] && dirs+=("$seeds")
    # The outer timeout only guards against libFuzzer itself getting stuck
    # (loading a huge corpus, a hang outside one input).
    timeout --kill-after=10 $((seconds + 120)) \
        cargo fuzz run "${fuzz_flags[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout="$per_input_timeout" \
        -rss_limit_mb="$rss_limit_mb" -print_final_stats=1 \
        >"$log_dir/$target.log" 2>&1 || status=$?
    echo "$status" >"$log_dir/$target.status"
}

report() {
    local target=$1 log=$log_dir/$1.log status
    status=$(cat "$log_dir/$target.status" 2>/dev/null || echo "?")
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    echo "fuzz: $target: ${runs:-?} runs, ${last:-no coverage line}, exit $status"
    if [ "$status" != 0 ]; then
        failed+=("$target")
        input=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        echo "fuzz: $target FAILED; input: ${input:-none saved}; log: $log"
        if [ "$status" = 124 ] || [ "$status" = 137 ]; then
            echo "    killed after $((seconds + 120)) s: libFuzzer did not stop by itself"
        fi
        # From libFuzzer's or the panic's report down to cargo-fuzz's
        # summary; the whole tail if neither is there.
        report=$(awk '/panicked at|==ERROR|ERROR: libFuzzer|ALARM|deadly signal/ { on = 1 }
                      /^Error: Fuzz target exited/ { on = 0 } on' "$log" | head -n 80)
        [ -n "$report" ] || report=$(tail -n 40 "$log")
        echo "$report" | sed 's/^/    /'
        if [ -n "$input" ]; then
            echo "    reproduce: cd proto && RUSTC_BOOTSTRAP=1 cargo fuzz run ${fuzz_flags[*]} $target $input"
        fi
    fi
}

# At most $jobs targets at once (the build is done, so each `cargo fuzz
# run` only starts its binary).
start=$SECONDS
running=0
for target in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_one "$target" &
    running=$((running + 1))
done
wait || true
failed=()
for target in "${targets[@]}"; do
    report "$target"
done
echo "fuzz: ran ${#targets[@]} targets, $jobs at a time, in $((SECONDS - start)) s"

if [ "${#failed[@]}" != 0 ]; then
    echo "fuzz: failing targets: ${failed[*]} (logs in $log_dir)"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a finding (logs in $log_dir)"
