"""Canned reports: documented SQL files shipped in ``tracekit/reports/sql/``, run by name.

Each ``<name>.sql`` starts with a header of ``-- key: value`` comment lines::

    -- name: imbalance
    -- title: one line
    -- answers: what question it answers (may go on over indented ``--`` lines)
    -- needs: expert_load, inputs          views the query reads
    -- param: ep (INTEGER, default 8, min 1): what it means
    -- column: layer: what the column holds

Parameters reach the query as DuckDB named parameters (``$ep``), never pasted into the SQL text.
Every query ends in ``ORDER BY`` so its rows come out in one order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from tracekit.errors import TracekitError, UnknownNameError, UsageError

SQL_PACKAGE = "tracekit.reports"
SQL_FOLDER = "sql"
#: Types a parameter may have (DuckDB names).
PARAM_TYPES = ("INTEGER", "DOUBLE", "VARCHAR", "BOOLEAN")

_PARAM = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*) \((?P<spec>[^)]*)\): (?P<doc>.+)$")
_COLUMN = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*): (?P<doc>.+)$")
_USE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, kw_only=True)
class ReportParam:
    """One parameter of a report."""

    name: str
    #: One of :data:`PARAM_TYPES`.
    type: str
    #: Default value, already converted to the parameter's type.
    default: Any
    description: str
    #: Smallest allowed value of a numeric parameter, if any.
    minimum: float | None = None
    #: Allowed values of a text parameter (empty: any).
    choices: tuple[str, ...] = ()

    def convert(self, raw: Any, *, report: str) -> Any:
        """``raw`` (text from the command line, or a Python value) as this parameter's type."""
        where = f"report {report} parameter {self.name}"
        text = str(raw).strip()
        value: Any
        try:
            if self.type == "INTEGER":
                value = raw if isinstance(raw, int) and not isinstance(raw, bool) else int(text)
            elif self.type == "DOUBLE":
                value = (
                    float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else float(text)
                )
            elif self.type == "BOOLEAN":
                if isinstance(raw, bool):
                    value = raw
                elif text.lower() in _TRUE | _FALSE:
                    value = text.lower() in _TRUE
                else:
                    raise ValueError(text)
            else:
                value = text
        except ValueError:
            raise UsageError(
                f"{where}: {raw!r} is not a valid {self.type.lower()}; e.g. --param {self.name}={self.default}"
            ) from None
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"{where}: {value} is below the minimum {self.minimum:g}; give a larger value")
        if self.choices and value not in self.choices:
            raise UsageError(f"{where}: {value!r} is not one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True, kw_only=True)
class ReportSpec:
    """A canned report: its documentation and its SQL."""

    name: str
    title: str
    answers: str
    #: Views the query reads (``inputs`` is always there).
    needs: tuple[str, ...]
    params: tuple[ReportParam, ...]
    #: (column, meaning) of each result column, in order.
    columns: tuple[tuple[str, str], ...]
    sql: str = field(repr=False)

    def param(self, name: str) -> ReportParam:
        for p in self.params:
            if p.name == name:
                return p
        raise UnknownNameError(f"parameter of report {self.name}", name, [p.name for p in self.params])

    def bind(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``params``; values converted and checked."""
        values = {p.name: p.default for p in self.params}
        for key, raw in (params or {}).items():
            values[key] = self.param(key).convert(raw, report=self.name)
        return values


@dataclass(frozen=True, kw_only=True)
class ReportResult:
    """Rows of one report run."""

    name: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    params: dict[str, Any]


def _parse_param(text: str, where: str) -> ReportParam:
    m = _PARAM.match(text)
    if not m:
        raise TracekitError(
            f"{where}: bad param line {text!r}; write 'name (TYPE, default X[, min N][, one of a|b]): meaning'"
        )
    parts = [s.strip() for s in m["spec"].split(",")]
    ptype, rest = parts[0], parts[1:]
    if ptype not in PARAM_TYPES:
        raise TracekitError(
            f"{where}: parameter {m['name']} has type {ptype}; use one of {', '.join(PARAM_TYPES)}"
        )
    default: str | None = None
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    for part in rest:
        key, _, val = part.partition(" ")
        if key == "default":
            default = val
        elif key == "min":
            minimum = float(val)
        elif part.startswith("one of "):
            choices = tuple(part[len("one of ") :].split("|"))
        else:
            raise TracekitError(f"{where}: parameter {m['name']}: unknown attribute {part!r}")
    if default is None:
        raise TracekitError(f"{where}: parameter {m['name']} has no default")
    draft = ReportParam(
        name=m["name"], type=ptype, default=default, description=m["doc"], minimum=minimum, choices=choices
    )
    return ReportParam(
        name=draft.name,
        type=ptype,
        default=draft.convert(default, report=where),
        description=draft.description,
        minimum=minimum,
        choices=choices,
    )


def parse_report(text: str, where: str) -> ReportSpec:
    """Parse one report file's header and body."""
    fields: dict[str, str] = {}
    params: list[ReportParam] = []
    columns: list[tuple[str, str]] = []
    last: str | None = None
    body_start = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("--"):
            body_start = i
            break
        content = line[2:]
        if content.startswith("   ") and last is not None:  # continuation of the previous field
            if last == "answers":
                fields["answers"] += " " + content.strip()
            continue
        key, sep, value = content.strip().partition(": ")
        if not sep:
            continue
        last = key
        if key == "param":
            params.append(_parse_param(value.strip(), where))
        elif key == "column":
            cm = _COLUMN.match(value.strip())
            if not cm:
                raise TracekitError(f"{where}: bad column line {value!r}")
            columns.append((cm["name"], cm["doc"]))
        else:
            fields[key] = value.strip()
    else:
        body_start = len(lines)
    sql = "\n".join(lines[body_start:]).strip()
    for key in ("name", "title", "answers", "needs"):
        if key not in fields:
            raise TracekitError(f"{where}: report header lacks '-- {key}:'")
    if not ends_in_order_by(sql):
        raise TracekitError(f"{where}: a report query must end in a top-level ORDER BY")
    used = set(_USE.findall(sql))
    declared = {p.name for p in params}
    if used != declared:
        raise TracekitError(
            f"{where}: parameters used {sorted(used)} differ from those declared {sorted(declared)}"
        )
    return ReportSpec(
        name=fields["name"],
        title=fields["title"],
        answers=fields["answers"],
        needs=tuple(n.strip() for n in fields["needs"].split(",") if n.strip()),
        params=tuple(params),
        columns=tuple(columns),
        sql=sql,
    )


@cache
def _reports() -> dict[str, ReportSpec]:
    folder = resources.files(SQL_PACKAGE).joinpath(SQL_FOLDER)
    specs: dict[str, ReportSpec] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        spec = parse_report(entry.read_text(encoding="utf-8"), where=f"{SQL_FOLDER}/{entry.name}")
        if spec.name != entry.name[: -len(".sql")]:
            raise TracekitError(
                f"{SQL_FOLDER}/{entry.name}: header says name {spec.name!r}; it must match the file name"
            )
        specs[spec.name] = spec
    return specs


def report_names() -> list[str]:
    """Names of the canned reports, sorted."""
    return sorted(_reports())


def get_report(name: str) -> ReportSpec:
    """The report called ``name``; :class:`UnknownNameError` lists the valid names."""
    specs = _reports()
    if name not in specs:
        raise UnknownNameError("report", name, specs, hint="see tracekit report --list")
    return specs[name]


def reports() -> list[ReportSpec]:
    return [_reports()[n] for n in report_names()]


def ends_in_order_by(sql: str) -> bool:
    """True when the outermost query's last clause is ``ORDER BY`` (not one inside a subquery,
    window or aggregate, and nothing but the ordering keys after it)."""
    text = re.sub(r"--[^\n]*", "", sql).strip().rstrip(";")
    matches = list(re.finditer(r"\bORDER\s+BY\b", text, flags=re.IGNORECASE))
    if not matches:
        return False
    tail = text[matches[-1].end() :]
    depth = 0
    for ch in tail:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:  # the ORDER BY closes inside parentheses: not the outer query's
            return False
    clauses = r"\b(SELECT|FROM|WHERE|GROUP\s+BY|HAVING|QUALIFY|WINDOW|UNION|EXCEPT|INTERSECT)\b"
    return depth == 0 and not re.search(clauses, re.sub(r"\([^()]*\)", "", tail), flags=re.IGNORECASE)


def used_params(sql: str) -> set[str]:
    """Names of the ``$name`` parameters a query uses."""
    return set(_USE.findall(sql))
