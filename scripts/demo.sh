#!/usr/bin/env bash
# The tracekit demo on the shipped sample traces. Run through `make demo` (which sets everything up).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${DEMO_OUT:-demo_out}"
rm -rf "$out" && mkdir -p "$out"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. The sample traces: validate each and show what it holds"
for t in sample_traces/*/; do
  tracekit validate "$t"
done
first=$(ls -d sample_traces/*/ | head -n 1)
tracekit info "$first"
