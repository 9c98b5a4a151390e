#!/usr/bin/env bash
# Fuzzes whosthat's parsers: every target (or the ones named) for SECONDS each
# (default 60), one after another.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      targets: token_request path_route config
#
# Env: FUZZ_SANITIZER (default address; "none" builds without ASan, faster),
#      FUZZ_ARGS (extra libFuzzer flags, e.g. "-jobs=2 -workers=2").
# New inputs go to fuzz/corpus/<target>/ (ignored by git); the committed seeds
# are fuzz/seeds/<target>/. Crashes land in fuzz/artifacts/<target>/; minimise
# one with `cargo fuzz tmin <target> <file>` and add it to
# tests/fuzz_regressions.rs. Exits non-zero when any target crashed.
set -uo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(token_request path_route config)
fi

# cargo-fuzz passes -Z flags to rustc: allowed on the stable toolchain with this.
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 1
fi

cargo fuzz build --sanitizer "$sanitizer" || exit 1

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: ${secs}s"
    # shellcheck disable=SC2086
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -dict="dicts/$t.dict" -print_final_stats=1 ${FUZZ_ARGS:-}; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crashes in ${targets[*]}"
