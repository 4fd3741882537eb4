"""``tracekit sql``, ``tracekit db`` and ``tracekit report`` through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import polars as pl
from click.testing import CliRunner

from tests.reports.conftest import Inputs
from tracekit.cli.main import cli
from tracekit.reports import report_names


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def test_sql_json_and_csv_match_polars(inputs: Inputs) -> None:
    q = "SELECT layer, sum(num_tokens) AS n FROM expert_load GROUP BY layer ORDER BY layer"
    want = (
        pl.read_parquet(str(inputs.trace / "expert_load" / "*.parquet"))
        .group_by("layer")
        .agg(pl.col("num_tokens").sum())
        .sort("layer")
    )
    code, out, _ = invoke("sql", q, inputs.trace, "--format", "json")
    assert code == 0
    assert json.loads(out) == [
        {"layer": a, "n": b} for a, b in zip(want["layer"], want["num_tokens"], strict=True)
    ]
    code, out, _ = invoke("sql", q, inputs.trace, "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["layer", "n"] and [list(map(int, r)) for r in rows[1:]] == [
        [a, b] for a, b in zip(want["layer"], want["num_tokens"], strict=True)
    ]
    code, out, _ = invoke("sql", q, inputs.trace, "--format", "markdown")
    assert out.splitlines()[0] == "| layer | n |"


def test_sql_table_output_is_capped(inputs: Inputs) -> None:
    code, out, err = invoke(
        "sql", "SELECT * FROM routing ORDER BY step, layer, token_index", inputs.trace, "--max-rows", "5"
    )
    assert code == 0 and "first 5 rows shown" in err
    assert "expert_ids" in out


def test_sql_refuses_a_negative_row_cap(inputs: Inputs) -> None:
    code, out, err = invoke("sql", "SELECT 1 AS x", inputs.trace, "--max-rows", "-1")
    assert code == 2 and out == ""
    assert "--max-rows" in err and "-1" in err


def test_report_keeps_an_existing_out_file_unless_forced(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "top.csv"
    out.write_text("keep me\n")
    code, _, err = invoke("report", "expert-load", inputs.trace, "--format", "csv", "--out", out)
    assert code == 2 and "file exists" in err and "--force" in err
    assert out.read_text() == "keep me\n"
    code, _, _ = invoke("report", "expert-load", inputs.trace, "--format", "csv", "--out", out, "--force")
    assert code == 0 and out.read_text().splitlines()[0].startswith("input,layer,")


def test_sql_schema_lists_views_and_columns(inputs: Inputs) -> None:
    code, out, _ = invoke("sql", "--schema", f"t={inputs.trace}", inputs.replay_h200, "--format", "json")
    assert code == 0
    views = {v["view"]: v for v in json.loads(out)}
    assert "num_tokens BIGINT" in views["expert_load"]["columns"]
    assert views["expert_load"]["columns"].startswith("input VARCHAR")
    assert views["replay_steps"]["inputs"] == "replay_h200"
    assert {"t_routing", "replay_h200_replay_steps", "inputs"} <= set(views)


def test_sql_errors_are_one_line(inputs: Inputs, tmp_path: Path) -> None:
    code, out, err = invoke("sql", "SELECT nope FROM steps", inputs.trace)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("tracekit: error: SQL error:") and "nope" in err
    code, _, err = invoke("sql", "SELECT 1", tmp_path / "missing")
    assert code == 2 and "no such file or directory" in err
    code, _, err = invoke("sql", str(inputs.trace), "SELECT 1")
    assert code == 2 and "the QUERY comes first" in err


def test_sql_query_from_file_and_without_inputs(tmp_path: Path, inputs: Inputs) -> None:
    qf = tmp_path / "q.sql"
    qf.write_text("SELECT count(*) AS n FROM steps")
    code, out, _ = invoke("sql", "-f", qf, inputs.trace, "--format", "json")
    assert code == 0 and json.loads(out) == [{"n": inputs.expert_ids.shape[0]}]
    code, out, _ = invoke("sql", "SELECT 6 * 7 AS x", "--format", "csv")
    assert code == 0 and out.split() == ["x", "42"]


def test_db_writes_a_file_the_duckdb_client_opens(tmp_path: Path, inputs: Inputs) -> None:
    out = tmp_path / "t.duckdb"
    code, text, _ = invoke("db", inputs.trace, inputs.ep.path, "--out", out)
    assert code == 0 and "open it with: duckdb" in text
    con = duckdb.connect(str(out), read_only=True)
    comm = pl.read_parquet(str(inputs.ep.path / "comm" / "*.parquet"))
    assert con.execute("SELECT sum(bytes_sent) FROM comm").fetchone() == (comm["bytes_sent"].sum(),)
    assert con.execute("SELECT sum(bytes_sent) FROM ep4_comm").fetchone() == (comm["bytes_sent"].sum(),)
    con.close()
    code, _, err = invoke("db", inputs.trace, "--out", out)
    assert code == 2 and "--force" in err
    code, _, _ = invoke("db", inputs.trace, "--out", out, "--force")
    assert code == 0


def test_report_list_describe_and_run(inputs: Inputs) -> None:
    code, out, _ = invoke("report", "--list", "--format", "csv")
    assert code == 0
    listed = [r[0] for r in csv.reader(io.StringIO(out))][1:]
    assert listed == [*report_names(), "html"]
    code, out, _ = invoke("report", "imbalance", "--describe")
    assert code == 0 and "ep" in out and "expert_gini" in out
    code, out, _ = invoke("report", "imbalance", inputs.trace, "--param", "ep=2", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert {r["ep"] for r in rows} == {2} and [r["layer"] for r in rows] == [1, 2, 3]


def test_report_errors(inputs: Inputs) -> None:
    code, _, err = invoke("report", "nope", inputs.trace)
    assert code == 2 and "unknown report 'nope'" in err and "imbalance" in err
    code, _, err = invoke("report", "imbalance", inputs.trace, "--param", "ep")
    assert code == 2 and "NAME=VALUE" in err
    code, _, err = invoke("report", "step-breakdown", inputs.trace)
    assert code == 2 and "replay_steps" in err
    code, _, err = invoke("report", "html", inputs.trace)
    assert code == 2 and "--out" in err
    code, _, err = invoke("report", "imbalance")
    assert code == 2 and "at least one" in err


def test_report_out_file(tmp_path: Path, inputs: Inputs) -> None:
    out = tmp_path / "imb.md"
    code, _, _ = invoke("report", "imbalance", inputs.trace, "--format", "markdown", "--out", out)
    assert code == 0 and out.read_text().startswith("| input | layer |")


def test_docs_describe_every_report() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sql.md").read_text()
    for name in report_names():
        assert f"| `{name}` |" in doc, f"docs/sql.md does not list report {name}"


def test_report_ep_shorthand(inputs: Inputs) -> None:
    code, short, _ = invoke("report", "imbalance", inputs.trace, "--ep", "2", "--format", "json")
    code2, long, _ = invoke("report", "imbalance", inputs.trace, "--param", "ep=2", "--format", "json")
    assert code == code2 == 0 and short == long
    code, _, err = invoke("report", "gate-weights", inputs.trace, "--ep", "2")
    assert code == 2 and "parameter of report gate-weights" in err
