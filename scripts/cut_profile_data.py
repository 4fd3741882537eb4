"""Cut the GPU side out of DeepSeek's published training profile (``train.json`` of the
``deepseek-ai/profile-data`` repository) for ``sample_profiles/deepseek-profile-data/``.

    python scripts/cut_profile_data.py train.json sample_profiles/deepseek-profile-data/train-gpu-rank0.json.gz

Kept, unchanged: every GPU event (``kernel``, ``gpu_memcpy``, ``gpu_memset``), the CUDA runtime and
driver calls that launched them (matched by ``correlation``), every ``user_annotation`` range (the
profiler step and DualPipe's ``attn/dispatch/mlp/combine`` chunk markers), the ``M`` metadata
events and the top-level keys (``deviceProperties``, ``distributedInfo``, ``traceName``,
``schemaVersion``). Dropped: CPU operators (``cpu_op``), flow arrows (``ac2g``, ``fwdbwd``),
instant events, the ``Trace`` span and launches of nothing on the GPU. The importer reads kernels,
their launches and the annotations only, so the cut imports to the same kernel rows as the whole
file (``tests/importers/test_profile_data.py`` checks the totals against a direct sum). Output is
gzip-compressed JSON with sorted keys, deterministic for a given input.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}


def cut(doc: dict) -> dict:
    events = doc["traceEvents"]
    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    corr = {e.get("args", {}).get("correlation") for e in gpu}
    kept = []
    for e in events:
        cat = e.get("cat")
        if (
            cat in GPU_CATS
            or cat == "user_annotation"
            or e.get("ph") == "M"
            or (cat in LAUNCH_CATS and e.get("args", {}).get("correlation") in corr)
        ):
            kept.append(e)
    out = {k: v for k, v in doc.items() if k != "traceEvents"}
    out["traceEvents"] = kept
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="train.json of deepseek-ai/profile-data")
    ap.add_argument("out", type=Path, help="the .json.gz to write")
    args = ap.parse_args()
    doc = json.loads(args.source.read_text())
    out = cut(doc)
    data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
    with args.out.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    print(
        f"kept {len(out['traceEvents'])} of {len(doc['traceEvents'])} events; "
        f"{args.out.stat().st_size} bytes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
