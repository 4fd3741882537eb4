"""The schema data files, the manifest dataclasses and the rendered reference."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.factories import tiny_arch, tiny_manifest
from tracekit.errors import SchemaError, SchemaVersionError, UnknownNameError
from tracekit.schema import Manifest, table_spec, table_specs
from tracekit.schema.render import manifest_json, reference_markdown
from tracekit.schema.tables import TABLE_NAMES, check_version, schema_root


def test_every_table_of_the_design_has_a_schema_file() -> None:
    assert set(table_specs()) == set(TABLE_NAMES)
    for spec in table_specs().values():
        assert spec.columns, spec.name
        for c in spec.columns:
            assert c.description, f"{spec.name}.{c.name} has no meaning"


def test_routing_is_compact_fixed_size_lists_of_small_ints() -> None:
    schema = table_spec("routing").arrow_schema(top_k=8)
    ids = schema.field("expert_ids").type
    assert pa.types.is_fixed_size_list(ids) and ids.list_size == 8 and ids.value_type == pa.int16()
    w = schema.field("gate_weights").type
    assert pa.types.is_fixed_size_list(w) and w.value_type == pa.float32()
    assert schema.field("layer").type == pa.int16()


def test_fixed_size_columns_need_top_k() -> None:
    with pytest.raises(SchemaError, match="top_k"):
        table_spec("routing").arrow_schema()


def test_unknown_table_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid names: comm, expert_load"):
        table_spec("routings")


def test_schema_version_is_stamped_into_arrow_metadata() -> None:
    md = table_spec("steps").arrow_schema().metadata
    assert md[b"tracekit.schema_version"] == b"1.0"
    assert md[b"tracekit.table"] == b"steps"


@pytest.mark.parametrize("version", ["2.0", "10.3"])
def test_newer_major_version_is_refused(version: str) -> None:
    with pytest.raises(SchemaVersionError, match="upgrade tracekit"):
        check_version(version, "x")


def test_older_minor_and_same_major_accepted() -> None:
    check_version("1.0", "x")
    check_version("1.7", "x")  # newer minor: extra columns are accepted


def test_manifest_round_trips_through_json() -> None:
    m = tiny_manifest()
    back = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m


def test_manifest_refuses_wrong_types_with_the_field_name() -> None:
    raw = tiny_manifest().to_dict()
    raw["model"]["num_experts"] = "eight"
    with pytest.raises(SchemaError, match=r"ModelArch.num_experts must be an integer"):
        Manifest.from_dict(raw)
    raw = tiny_manifest().to_dict()
    del raw["model"]["top_k"]
    with pytest.raises(SchemaError, match=r"ModelArch.top_k is missing"):
        Manifest.from_dict(raw)


def test_manifest_accepts_unknown_extra_keys() -> None:
    raw = tiny_manifest().to_dict()
    raw["future_field"] = {"x": 1}
    raw["model"]["future_model_field"] = 3
    assert Manifest.from_dict(raw).model == tiny_arch()


def test_arch_checks_its_layers_and_top_k() -> None:
    with pytest.raises(SchemaError, match=r"top_k 9 not in 1\.\.8"):
        tiny_arch(top_k=9)


def test_rendered_reference_and_manifest_schema_are_current() -> None:
    root = schema_root()
    assert (root / "README.md").read_text() == reference_markdown(), "run python -m tracekit.schema.render"
    assert (root / "v1" / "manifest.json").read_text() == manifest_json(), (
        "run python -m tracekit.schema.render"
    )
