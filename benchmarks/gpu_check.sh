#!/usr/bin/env bash
# The GPU check of `tracekit bench` and of the collectors' CUDA paths, in one run under 8 minutes.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. the microbenchmarks on cuda:0 (4-minute budget, collectives when there are several GPUs);
# 2. a tiny preset recorded on CUDA and on the CPU with the same weights and prompts, routing
#    compared (benchmarks/gpu_check.py), plus an EP=2 NCCL recording when there are two GPUs.
# Everything lands in OUT_DIR: bench-cuda.parquet, bench.log, bench-show.txt, routing_check.{json,md},
# the traces, nvidia-smi.txt, env.txt. Python: $PYTHON, else .venv/bin/python, else python3; the
# repository root is put on PYTHONPATH, so an installed tracekit is not needed (its dependencies are).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
if ! "$PY" - > "$OUT/env.txt" 2>&1 <<'PYEOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
for m in ("polars", "pyarrow", "duckdb", "click", "rich", "transformers", "flash_attn", "flashinfer"):
    try:
        print(m, importlib.import_module(m).__version__)
    except ImportError:
        print(m, "not installed")
assert torch.cuda.is_available(), "torch sees no CUDA device"
PYEOF
then
  echo "environment not usable (see $OUT/env.txt)"; cat "$OUT/env.txt"; exit 2
fi
cat "$OUT/env.txt"

echo "== bench (budget 4m)"
timeout 330 "$PY" -m tracekit.cli.main bench run --device cuda --budget 4m --out "$OUT/bench-cuda.parquet" --force \
  > "$OUT/bench.log" 2>&1 || { echo "bench failed"; status=1; }
tail -n 5 "$OUT/bench.log"
if [ -f "$OUT/bench-cuda.parquet" ]; then
  "$PY" -m tracekit.cli.main bench show "$OUT/bench-cuda.parquet" --format markdown > "$OUT/bench-show.md" 2>&1
  cat "$OUT/bench-show.md"
fi

echo "== collectors on CUDA vs CPU"
timeout 150 "$PY" benchmarks/gpu_check.py --out "$OUT" > "$OUT/routing_check.log" 2>&1 || { echo "routing check failed"; status=1; }
tail -n 30 "$OUT/routing_check.log"
exit $status
