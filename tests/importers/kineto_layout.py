"""Kineto Chrome-trace JSON built in the exact layout torch.profiler writes for a CUDA run.

Top-level keys as Kineto writes them (schemaVersion, deviceProperties, distributedInfo, traceEvents,
traceName, baseTimeNanoseconds); per GPU kernel a ``kernel`` event on the device's pid and stream
tid, its ``cudaLaunchKernel`` ``cuda_runtime`` event on the host thread with the same correlation id,
and the ``ac2g`` flow pair linking them; ``gpu_user_annotation`` / ``user_annotation`` ranges;
``record_param_comms`` CPU operators with the collective metadata keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST_PID = 4242
BASE_US = 1_717_000_000_000.0


@dataclass
class KinetoBuilder:
    rank: int = 0
    world_size: int = 8
    events: list[dict[str, Any]] = field(default_factory=list)
    _corr: int = 1000
    _ext: int = 10

    def kernel(
        self,
        name: str,
        ts_us: float,
        dur_us: float,
        *,
        stream: int = 7,
        cat: str = "kernel",
        launch_us: float | None = None,
        extra_args: dict[str, Any] | None = None,
        external_id: int | None = None,
    ) -> int:
        """A GPU activity and (for kernels) its launch; returns its correlation id."""
        self._corr += 1
        ext = external_id if external_id is not None else self._next_ext()
        args: dict[str, Any] = {"External id": ext, "device": 0, "stream": stream, "correlation": self._corr}
        if cat == "kernel":
            args.update(
                {
                    "registers per thread": 128,
                    "shared memory": 49152,
                    "blocks per SM": 0.5,
                    "warps per SM": 4.0,
                    "grid": [66, 1, 1],
                    "block": [256, 1, 1],
                    "est. achieved occupancy %": 6,
                }
            )
        else:
            args.update({"bytes": 4096, "memory bandwidth (GB/s)": 12.5})
        args.update(extra_args or {})
        self.events.append(
            {
                "ph": "X",
                "cat": cat,
                "name": name,
                "pid": 0,
                "tid": stream,
                "ts": BASE_US + ts_us,
                "dur": dur_us,
                "args": args,
            }
        )
        if launch_us is not None:
            self.events.append(
                {
                    "ph": "X",
                    "cat": "cuda_runtime",
                    "name": "cudaLaunchKernel",
                    "pid": HOST_PID,
                    "tid": HOST_PID,
                    "ts": BASE_US + launch_us,
                    "dur": 4.2,
                    "args": {"External id": ext, "cbid": 211, "correlation": self._corr},
                }
            )
            self.events.append(
                {
                    "ph": "s",
                    "id": self._corr,
                    "pid": HOST_PID,
                    "tid": HOST_PID,
                    "ts": BASE_US + launch_us,
                    "cat": "ac2g",
                    "name": "ac2g",
                }
            )
            self.events.append(
                {
                    "ph": "f",
                    "id": self._corr,
                    "pid": 0,
                    "tid": stream,
                    "ts": BASE_US + ts_us,
                    "cat": "ac2g",
                    "name": "ac2g",
                    "bp": "e",
                }
            )
        return self._corr

    def _next_ext(self) -> int:
        self._ext += 1
        return self._ext

    def annotation(self, name: str, ts_us: float, dur_us: float, *, gpu: bool) -> None:
        if gpu:
            self.events.append(
                {
                    "ph": "X",
                    "cat": "gpu_user_annotation",
                    "name": name,
                    "pid": 0,
                    "tid": 7,
                    "ts": BASE_US + ts_us,
                    "dur": dur_us,
                    "args": {"External id": self._next_ext(), "device": 0, "stream": 7},
                }
            )
        else:
            self.events.append(
                {
                    "ph": "X",
                    "cat": "user_annotation",
                    "name": name,
                    "pid": HOST_PID,
                    "tid": HOST_PID,
                    "ts": BASE_US + ts_us,
                    "dur": dur_us,
                    "args": {"External id": self._next_ext(), "Record function id": 0, "Ev Idx": 3},
                }
            )

    def record_param_comms(
        self, ts_us: float, *, collective: str, dtype: str, in_nelems: int, out_nelems: int, group_size: int
    ) -> int:
        ext = self._next_ext()
        self.events.append(
            {
                "ph": "X",
                "cat": "cpu_op",
                "name": "record_param_comms",
                "pid": HOST_PID,
                "tid": HOST_PID,
                "ts": BASE_US + ts_us,
                "dur": 12.0,
                "args": {
                    "External id": ext,
                    "Record function id": 0,
                    "Ev Idx": 7,
                    "Collective name": collective,
                    "dtype": dtype,
                    "In msg nelems": in_nelems,
                    "Out msg nelems": out_nelems,
                    "In split size": "[]",
                    "Out split size": "[]",
                    "Global rank start": 0,
                    "Global rank stride": 1,
                    "Group size": group_size,
                    "Process Group Name": "0",
                    "Process Group Description": "default_pg",
                    "Process Group Ranks": str(list(range(group_size))),
                    "Rank": self.rank,
                    "Seq": 3,
                },
            }
        )
        return ext

    def document(self) -> dict[str, Any]:
        meta = [
            {
                "name": "process_name",
                "ph": "M",
                "ts": BASE_US,
                "pid": 0,
                "tid": 0,
                "args": {"name": "python"},
            },
            {
                "name": "process_labels",
                "ph": "M",
                "ts": BASE_US,
                "pid": 0,
                "tid": 0,
                "args": {"labels": "GPU 0"},
            },
            {
                "name": "thread_name",
                "ph": "M",
                "ts": BASE_US,
                "pid": 0,
                "tid": 7,
                "args": {"name": "stream 7 "},
            },
            {
                "name": "process_name",
                "ph": "M",
                "ts": BASE_US,
                "pid": HOST_PID,
                "tid": 0,
                "args": {"name": "python"},
            },
        ]
        return {
            "schemaVersion": 1,
            "deviceProperties": [
                {
                    "id": 0,
                    "name": "NVIDIA H200",
                    "totalGlobalMem": 150754820096,
                    "computeMajor": 9,
                    "computeMinor": 0,
                    "maxThreadsPerBlock": 1024,
                    "numSms": 132,
                    "sharedMemPerBlock": 49152,
                }
            ],
            "distributedInfo": {
                "backend": "nccl",
                "rank": self.rank,
                "world_size": self.world_size,
                "pg_count": 1,
                "nccl_version": "2.21.5",
            },
            "cuda_runtime_version": 12040,
            "trace_id": "8C1F5E0A",
            "displayTimeUnit": "ms",
            "baseTimeNanoseconds": 1717000000000000000,
            "traceEvents": meta + self.events,
            "traceName": f"trace_rank{self.rank}.json",
        }

    def write(self, path: Path, *, indent: int | None = None) -> Path:
        path.write_text(json.dumps(self.document(), indent=indent))
        return path
