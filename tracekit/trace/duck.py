"""DuckDB over remote traces: its httpfs extension where it is installed, else Arrow datasets.

DuckDB reads ``s3://`` Parquet itself with the httpfs extension. tracekit never downloads the
extension (``INSTALL httpfs`` is the user's choice; DuckDB fetches it from its own repository); when it
is installed, :func:`remote_reader` loads it and gives it the same S3 settings pyarrow uses (the
``AWS_*`` variables, the endpoint of an S3-compatible store). Otherwise the trace's tables are read
through pyarrow datasets registered on the connection, with column and row-group pruning, which
works for every filesystem tracekit opens but only for as long as the connection lives.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import duckdb

from tracekit.errors import UsageError
from tracekit.trace.store import Location, RemotePath

#: Set to 0 to read remote traces through Arrow datasets even where httpfs is installed.
HTTPFS_ENV = "TRACEKIT_DUCKDB_HTTPFS"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def httpfs_loaded(con: duckdb.DuckDBPyConnection) -> bool:
    """Load DuckDB's httpfs extension when it is installed (never downloads it)."""
    if os.environ.get(HTTPFS_ENV, "1") == "0":
        return False
    try:
        con.execute("LOAD httpfs")
    except duckdb.Error:
        return False
    return True


def s3_secret_sql() -> str:
    """``CREATE SECRET`` for DuckDB's S3 reader from the variables pyarrow's S3 client reads."""
    opts = ["TYPE s3"]
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        opts += [f"KEY_ID {_sql_str(key)}", f"SECRET {_sql_str(secret)}"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            opts.append(f"SESSION_TOKEN {_sql_str(os.environ['AWS_SESSION_TOKEN'])}")
    else:
        opts.append("PROVIDER credential_chain")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts.append(f"REGION {_sql_str(region)}")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts += [
            f"ENDPOINT {_sql_str(parts.netloc)}",
            "URL_STYLE 'path'",
            f"USE_SSL {'false' if parts.scheme == 'http' else 'true'}",
        ]
    return f"CREATE OR REPLACE SECRET tracekit_s3 ({', '.join(opts)})"


def remote_reader(con: duckdb.DuckDBPyConnection, where: RemotePath | object) -> bool:
    """True when DuckDB itself reads ``where`` (an ``s3://`` trace, httpfs installed), after setting
    up its S3 access on ``con``; False when the caller should register Arrow datasets instead."""
    if not isinstance(where, RemotePath) or where.scheme != "s3" or "?" in str(where):
        return False
    if not httpfs_loaded(con):
        return False
    try:
        con.execute(s3_secret_sql())
    except duckdb.Error:
        return False
    return True


def needs_httpfs(where: object) -> UsageError:
    """The error for a database file asked to keep views over a remote trace DuckDB cannot read."""
    return UsageError(
        f"{where}: a database file can keep views over a remote trace only when DuckDB reads it itself "
        "(s3:// with DuckDB's httpfs extension installed: duckdb -c 'INSTALL httpfs'); query it with "
        "tracekit sql instead, or copy the trace to a local folder"
    )


def parquet_view(
    con: duckdb.DuckDBPyConnection, view: str, files: list[Location], *, persistent: bool = False
) -> None:
    """``CREATE VIEW view`` over Parquet ``files`` (local, or remote through httpfs or Arrow)."""
    from tracekit.trace.reader import parquet_list

    remote = [f for f in files if isinstance(f, RemotePath)]
    if remote and not remote_reader(con, remote[0]):
        if persistent:
            raise needs_httpfs(remote[0])
        import pyarrow.dataset as ds

        hidden = f"__tracekit_arrow_{view}"
        con.register(hidden, ds.dataset([f.path for f in remote], filesystem=remote[0].fs, format="parquet"))
        con.execute(f'CREATE OR REPLACE VIEW "{view}" AS SELECT * FROM "{hidden}"')
        return
    con.execute(f'CREATE OR REPLACE VIEW "{view}" AS SELECT * FROM read_parquet({parquet_list(files)})')
