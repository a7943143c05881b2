#!/usr/bin/env bash
# Coverage-guided fuzzing of Petrel's parsers and verifiers with libFuzzer, on the stable
# toolchain. See docs/fuzzing.md.
#
#   scripts/fuzz.sh --list                 the targets
#   scripts/fuzz.sh TARGET MINUTES         fuzz one target (builds first if needed)
#   scripts/fuzz.sh --smoke SECONDS        every target for SECONDS each; non-zero on a crash
#   scripts/fuzz.sh --build                build every target
#   scripts/fuzz.sh --seeds                regenerate the seed corpora fuzz/corpus/<target>/
#
# Environment: FUZZ_JOBS (cargo build jobs), FUZZ_ARGS (extra libFuzzer flags),
# FUZZ_RSS_MB (memory limit per fuzzer, default 2048), FUZZ_PROFILE (the cargo profile:
# `release` by default, `smoke` for --smoke: optimised less, so it builds in about half
# the time, for the short bounded run of the test command).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
PROFILE="${FUZZ_PROFILE:-release}"
[[ "${1:-}" == "--smoke" ]] && PROFILE="${FUZZ_PROFILE:-smoke}"
BIN_DIR="$FUZZ/target/$HOST/$PROFILE"
TARGETS=(tuf_root tuf_timestamp tuf_snapshot tuf_tree_node tuf_targets canonical_json manifest delta_apply tree_container server_reports server_path)

# Sanitizer coverage for libFuzzer on stable rustc: inline 8-bit counters and the PC table
# (what libFuzzer's `cov:`/`ft:` count), comparison tracing (guides it through magic values
# and lengths), debug assertions and overflow checks (so arithmetic bugs crash).
# `--cfg fuzzing` as cargo-fuzz sets it.
SANCOV_RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

is_target() {
    local t
    for t in "${TARGETS[@]}"; do [[ "$t" == "$1" ]] && return 0; done
    return 1
}

# Builds every target (cargo does nothing when they are up to date). With --target, the
# flags apply to the fuzzed code only, not to build scripts and proc macros.
build() {
    local start=$SECONDS args=()
    for t in "${TARGETS[@]}"; do args+=(--bin "$t"); done
    echo "fuzz: building ${#TARGETS[@]} targets, profile $PROFILE (fuzz/target; the first build compiles every dependency with coverage, several minutes)" >&2
    RUSTFLAGS="$SANCOV_RUSTFLAGS" CARGO_TARGET_DIR="$FUZZ/target" \
        cargo build --quiet --locked --profile "$PROFILE" --manifest-path "$FUZZ/Cargo.toml" \
        --target "$HOST" ${FUZZ_JOBS:+--jobs "$FUZZ_JOBS"} "${args[@]}"
    echo "fuzz: build took $((SECONDS - start)) s" >&2
}

# Runs libFuzzer on TARGET for SECONDS: new inputs go to WORK (default fuzz/work/<target>/,
# ignored by git), the committed seeds in fuzz/corpus/<target>/ are read only, crashes are written to
# fuzz/artifacts/<target>/. Prints executions and coverage at the end.
run() {
    local target="$1" seconds="$2" work="${3:-$FUZZ/work/$1}" log
    local seeds="$FUZZ/corpus/$target" artifacts="$FUZZ/artifacts/$target"
    mkdir -p "$work" "$artifacts"
    [[ -d "$seeds" ]] || mkdir -p "$seeds"
    local dict=()
    [[ -f "$FUZZ/dict/$target.dict" ]] && dict=(-dict="$FUZZ/dict/$target.dict")
    log="$(mktemp "${TMPDIR:-/tmp}/petrel-fuzz-$target.XXXXXX")"
    local status=0
    # shellcheck disable=SC2086
    "$BIN_DIR/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
        ${FUZZ_ARGS:-} "$work" "$seeds" >"$log" 2>&1 || status=$?
    summarize "$target" "$log" "$status"
    if [[ $status -ne 0 ]]; then
        echo "fuzz: $target FAILED (exit $status); libFuzzer's output:" >&2
        grep -v -e '^#[0-9]' -e 'NEW_FUNC' "$log" | tail -n 50 >&2
        echo "fuzz: log kept in $log; crash inputs in fuzz/artifacts/$target/" >&2
        return "$status"
    fi
    rm -f "$log"
}

summarize() {
    local target="$1" log="$2" status="$3"
    local last execs rate cov ft corp
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
    if grep -q "Is the code instrumented for coverage" "$log"; then
        echo "fuzz: $target: no coverage instrumentation found" >&2
        status=99
    fi
    printf 'fuzz: %-15s %s  execs %s (%s/s)  cov %s  ft %s  corpus %s\n' \
        "$target" "$([[ $status -eq 0 ]] && echo ok || echo FAIL)" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}"
}

[[ $# -ge 1 ]] || usage
case "$1" in
    --list)
        printf '%s\n' "${TARGETS[@]}"
        ;;
    --build)
        build
        ;;
    --seeds)
        # Plain build (no coverage flags): the generator is not fuzzed.
        rm -rf "$FUZZ/corpus"
        CARGO_TARGET_DIR="$FUZZ/target" cargo run --quiet \
            --manifest-path "$FUZZ/Cargo.toml" --bin fuzz-seeds -- "$FUZZ/corpus"
        ;;
    --smoke)
        [[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] || usage
        total=$SECONDS
        build
        # Start from the committed seeds only and throw away what is found, so that every
        # smoke run does the same work whatever ran before.
        scratch="$(mktemp -d "${TMPDIR:-/tmp}/petrel-fuzz-smoke.XXXXXX")"
        trap 'rm -rf "$scratch"' EXIT
        failed=()
        for t in "${TARGETS[@]}"; do
            mkdir -p "$scratch/$t"
            run "$t" "$2" "$scratch/$t" || failed+=("$t")
        done
        echo "fuzz: smoke run took $((SECONDS - total)) s"
        echo "fuzz: $((${#TARGETS[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
        if [[ ${#failed[@]} -gt 0 ]]; then
            echo "fuzz: crashed: ${failed[*]}" >&2
            exit 1
        fi
        ;;
    -*)
        usage
        ;;
    *)
        [[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] || usage
        is_target "$1" || { echo "fuzz: unknown target $1 (see --list)" >&2; exit 2; }
        build
        run "$1" "$(($2 * 60))"
        ;;
esac
