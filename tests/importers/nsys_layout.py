"""Nsight Systems SQLite exports built in code, in the layout ``nsys export --type sqlite`` writes.

Tables and columns follow NVIDIA's documented export schema (checked against public exports of
Nsight Systems 2022.2 and 2024.5): activity tables hold integer ns ``start``/``end``, ``deviceId``,
``streamId``, ``correlationId`` and ``globalPid``; kernel names are ``StringIds`` ids
(``demangledName``, ``shortName``); NVTX ranges carry ``text`` or a ``textId`` and the thread's
``globalTid``; a serialized global id holds the process id shifted left by 24 bits (the thread id
below it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KERNEL_DDL = """CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (
    start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL,
    greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER,
    demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL, mangledName INTEGER, launchType INTEGER,
    cacheConfig INTEGER, registersPerThread INTEGER NOT NULL, gridX INTEGER NOT NULL, gridY INTEGER NOT NULL,
    gridZ INTEGER NOT NULL, blockX INTEGER NOT NULL, blockY INTEGER NOT NULL, blockZ INTEGER NOT NULL,
    staticSharedMemory INTEGER NOT NULL, dynamicSharedMemory INTEGER NOT NULL,
    localMemoryPerThread INTEGER NOT NULL, localMemoryTotal INTEGER NOT NULL, gridId INTEGER NOT NULL,
    sharedMemoryExecuted INTEGER, graphNodeId INTEGER, sharedMemoryLimitConfig INTEGER)"""
MEMCPY_DDL = """CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (
    start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL,
    greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER,
    bytes INTEGER NOT NULL, copyKind INTEGER NOT NULL, deprecatedSrcId INTEGER, srcKind INTEGER,
    dstKind INTEGER, srcDeviceId INTEGER, srcContextId INTEGER, dstDeviceId INTEGER, dstContextId INTEGER,
    migrationCause INTEGER, graphNodeId INTEGER, virtualAddress INTEGER)"""
MEMSET_DDL = """CREATE TABLE CUPTI_ACTIVITY_KIND_MEMSET (
    start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL,
    greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER,
    value INTEGER NOT NULL, bytes INTEGER NOT NULL, graphNodeId INTEGER, memKind INTEGER)"""
RUNTIME_DDL = """CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (
    start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER NOT NULL, globalTid INTEGER,
    correlationId INTEGER, nameId INTEGER NOT NULL, returnValue INTEGER NOT NULL, callchainId INTEGER)"""
NVTX_DDL = """CREATE TABLE NVTX_EVENTS (
    start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, rangeId INTEGER, category INTEGER,
    color INTEGER, text TEXT, globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER, domainId INTEGER,
    uint64Value INTEGER, int64Value INTEGER, doubleValue REAL, uint32Value INTEGER, int32Value INTEGER,
    floatValue REAL, jsonTextId INTEGER, jsonText TEXT)"""
STRINGS_DDL = "CREATE TABLE StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL)"
GPU_DDL = """CREATE TABLE TARGET_INFO_GPU (
    vmId INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT, busLocation TEXT, isDiscrete INTEGER,
    l2CacheSize INTEGER, totalMemory INTEGER, memoryBandwidth INTEGER, clockRate INTEGER, smCount INTEGER,
    uuid TEXT, chipName TEXT, cuDevice INTEGER, computeMajor INTEGER, computeMinor INTEGER)"""
META_DDL = "CREATE TABLE META_DATA_EXPORT (name TEXT NOT NULL, value TEXT)"
#: NvtxPushPopRange, NvtxMark (a mark is not a range).
PUSH_POP = 59
MARK = 34


def global_tid(pid: int, tid: int) -> int:
    return (pid << 24) | tid


@dataclass
class NsysBuilder:
    """Rows of an export; ``write`` makes the SQLite file."""

    pid: int = 4242
    strings: dict[str, int] = field(default_factory=dict)
    kernels: list[tuple[Any, ...]] = field(default_factory=list)
    memcpys: list[tuple[Any, ...]] = field(default_factory=list)
    memsets: list[tuple[Any, ...]] = field(default_factory=list)
    runtime: list[tuple[Any, ...]] = field(default_factory=list)
    nvtx: list[tuple[Any, ...]] = field(default_factory=list)
    gpus: list[tuple[int, str]] = field(default_factory=list)

    def sid(self, text: str) -> int:
        if text not in self.strings:
            self.strings[text] = len(self.strings) + 1
        return self.strings[text]

    def launch(
        self, start: int, corr: int, *, pid: int | None = None, name: str = "cudaLaunchKernel_v7000"
    ) -> None:
        p = self.pid if pid is None else pid
        self.runtime.append((start, start + 4200, 1, global_tid(p, p), corr, self.sid(name), 0, None))

    def kernel(
        self,
        name: str,
        start: int,
        end: int,
        *,
        device: int = 0,
        stream: int = 7,
        corr: int,
        pid: int | None = None,
    ) -> None:
        p = self.pid if pid is None else pid
        short = name.split("(")[0].split("<")[0].split("::")[-1].split()[-1]
        self.kernels.append(
            (start, end, device, 1, None, stream, corr, p << 24, self.sid(name), self.sid(short), None, 1, 0,
             128, 66, 1, 1, 256, 1, 1, 0, 49152, 0, 0, corr, 0, None, 1)
        )  # fmt: skip

    def memcpy(
        self,
        start: int,
        end: int,
        *,
        kind: int,
        src: int,
        dst: int,
        corr: int,
        device: int = 0,
        stream: int = 7,
    ) -> None:
        self.memcpys.append(
            (start, end, device, 1, None, stream, corr, self.pid << 24, 4096, kind, None, src, dst,
             None, None, device, 1, None, None, None)
        )  # fmt: skip

    def memset(
        self, start: int, end: int, *, mem_kind: int, corr: int, device: int = 0, stream: int = 7
    ) -> None:
        self.memsets.append(
            (start, end, device, 1, None, stream, corr, self.pid << 24, 0, 4096, None, mem_kind)
        )

    def range(
        self,
        text: str,
        start: int,
        end: int,
        *,
        pid: int | None = None,
        json_text: str | None = None,
        via_string_id: bool = False,
        event_type: int = PUSH_POP,
    ) -> None:
        p = self.pid if pid is None else pid
        text_col, text_id = (None, self.sid(text)) if via_string_id else (text, None)
        self.nvtx.append(
            (start, end, event_type, None, None, None, text_col, global_tid(p, p), None, text_id, 0,
             None, None, None, None, None, None, None, json_text)
        )  # fmt: skip

    def gpu(self, device: int, name: str) -> None:
        self.gpus.append((device, name))

    def write(self, path: Path) -> Path:
        if path.exists():
            path.unlink()
        con = sqlite3.connect(path)
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        try:
            for ddl in (
                KERNEL_DDL,
                MEMCPY_DDL,
                MEMSET_DDL,
                RUNTIME_DDL,
                NVTX_DDL,
                STRINGS_DDL,
                GPU_DDL,
                META_DDL,
            ):
                con.execute(ddl)
            con.executemany("INSERT INTO StringIds VALUES (?, ?)", [(i, s) for s, i in self.strings.items()])
            for table, rows in (
                ("CUPTI_ACTIVITY_KIND_KERNEL", self.kernels),
                ("CUPTI_ACTIVITY_KIND_MEMCPY", self.memcpys),
                ("CUPTI_ACTIVITY_KIND_MEMSET", self.memsets),
                ("CUPTI_ACTIVITY_KIND_RUNTIME", self.runtime),
                ("NVTX_EVENTS", self.nvtx),
            ):
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            con.executemany(
                "INSERT INTO TARGET_INFO_GPU (vmId, id, name, cuDevice) VALUES (?, ?, ?, ?)",
                [(1 << 48, d, n, d) for d, n in self.gpus],
            )
            con.executemany(
                "INSERT INTO META_DATA_EXPORT VALUES (?, ?)",
                [("EXPORT_PRODUCT_NAME", "NVIDIA Nsight Systems"), ("EXPORT_SCHEMA_VERSION", "3.13.2")],
            )
            con.commit()
        finally:
            con.close()
        return path
