#!/usr/bin/env bash
# The tracekit demo, on a fresh recording and the shipped sample traces. Run it with `make demo`,
# which sets everything up first. Outputs go to demo_out/ (or $DEMO_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${DEMO_OUT:-demo_out}"
rm -rf "$out" && mkdir -p "$out"
say() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }
run() { say "$1" "${*:2}"; "${@:2}"; }

run "The shipped sample traces validate" \
  tracekit validate sample_traces/*/

run "1. Record a real generate() run of a DeepSeek-V3-architecture model (tiny random-init weights, the real router: 256 experts, top-8, 8 groups)" \
  tracekit record --model tiny-deepseek-v3 --num-prompts 16 --batch-size 16 --max-new-tokens 16 --out "$out/dsv3"
run "   What the trace holds" \
  tracekit info "$out/dsv3"

run "2. Replay that real routing as DeepSeek-R1 on HGX H200 and on GB200 NVL72, side by side" \
  tracekit compare "$out/dsv3" --model deepseek-r1 --hw h200-sxm --hw gb200-nvl72
run "   ... and at equal interactivity (best deployment giving >= 50 tokens/s per user)" \
  tracekit compare "$out/dsv3" --model deepseek-r1 --hw h200-sxm --hw gb200-nvl72 --at-interactivity 50 \
  --precision experts=fp8
run "   One replay written as Parquet tables" \
  tracekit replay "$out/dsv3" --model deepseek-r1 --hw h200-sxm --ep 16 --out "$out/r1-h200-ep16"

run "3. Ask a question in SQL: which experts are hottest per layer, and how much of the dispatch crosses the network?" \
  tracekit report expert-load "$out/dsv3" --param top=3
run "   Dispatch bytes of the EP16 replay by the link they cross (H200: 8 GPUs per NVLink domain)" \
  tracekit sql "SELECT link, round(sum(dispatch_bytes) / 1e6, 2) AS dispatch_mb, count(*) AS rank_pairs FROM replay_peers GROUP BY link ORDER BY link" "$out/r1-h200-ep16"
run "   Time per component of the replayed steps" \
  tracekit report step-breakdown "$out/r1-h200-ep16"

run "4. Production scale: synthesise a DeepSeek-R1 decode trace fitted to the recorded routing statistics" \
  tracekit synth --model deepseek-r1 --phase decode --tokens-per-step 2048 --steps 4 \
  --routing "fitted:$out/dsv3" --seed 1 --ep 32 --out "$out/r1-fitted"
run "   ... and compare the two systems on it" \
  tracekit compare "$out/r1-fitted" --hw h200-sxm --hw gb200-nvl72 --ep 32 --batch-per-gpu 64

run "5. Expert-parallel traffic recorded from a real 4-rank run (shipped sample)" \
  tracekit report comm-summary sample_traces/tiny-qwen3-moe-ep4

run "6. Placement what-if: EPLB vs contiguous placement, re-timed on the same trace" \
  tracekit place sample_traces/tiny-deepseek-v3 --ep 8 --redundant 8 --window 16 --evaluate --hw h200-sxm \
  --model deepseek-v3

run "7. One self-contained HTML report" \
  tracekit report html "$out/dsv3" "$out/r1-h200-ep16" --out "$out/report.html"
