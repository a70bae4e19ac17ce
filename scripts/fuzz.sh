#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS each (default 60), or the targets named as
# arguments. The toolchain is stable, so RUSTC_BOOTSTRAP lets cargo-fuzz use libFuzzer's
# nightly flags; the code forbids `unsafe`, so no sanitizer is needed to find its bugs
# (panics, overflows, failed assertions are what the targets check).
#   cargo install cargo-fuzz --locked      # once
#   FUZZ_SECONDS=600 scripts/fuzz.sh       # the 10-minute-per-target run
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(command reply data content spool_record config milter server_session client_session)
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== fuzz target $t for ${secs}s"
  # Hand-written seeds (fuzz/seeds/) start the corpus; what libFuzzer adds stays local.
  mkdir -p fuzz/corpus/"$t"
  if [ -d fuzz/seeds/"$t" ]; then cp -n fuzz/seeds/"$t"/* fuzz/corpus/"$t"/; fi
  cargo fuzz run --sanitizer none "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+.*DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|panicked|thread)" || true
  if ls fuzz/artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $t found a crash: fuzz/artifacts/$t/"; exit 1
  fi
done
