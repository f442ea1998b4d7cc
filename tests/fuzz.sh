#!/usr/bin/env bash
# Fuzz what pvdir reads off the wire (fuzz/fuzz_targets/*.rs) with libFuzzer, on stable Rust:
# rustc's sanitizer-coverage pass instruments the code (stable -C flags; cargo-fuzz would add
# nightly-only sanitizers). Each target runs FUZZ_SECS seconds (default 20) from its corpus in
# fuzz/corpus/<target>, which keeps what earlier runs found; a crash fails the run and leaves
# its input in target/fuzz/artifacts/<target>/. Longer: FUZZ_SECS=3600 tests/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-20}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
# The instrumentation must not reach build scripts and proc macros: an explicit --target keeps
# RUSTFLAGS to the target's crates.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Cdebug-assertions -Coverflow-checks"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" \
  --target-dir target/fuzz --bins
for t in volume_id parameters requests; do
  mkdir -p "fuzz/corpus/$t" "target/fuzz/artifacts/$t" "target/fuzz/new/$t"
  # New finds go to a scratch directory first and are merged into the kept corpus in
  # minimised form, so the repository keeps a small corpus that covers the same code.
  "target/fuzz/$triple/release/$t" "target/fuzz/new/$t" "fuzz/corpus/$t" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="target/fuzz/artifacts/$t/" 2>&1 | tail -n 12 | sed "s/^/fuzz $t: /"
  "target/fuzz/$triple/release/$t" -merge=1 "fuzz/corpus/$t" "target/fuzz/new/$t" \
    2>&1 | tail -n 1 | sed "s/^/fuzz $t corpus: /"
  rm -rf "target/fuzz/new/$t"
done
