import dataclasses
import math

import dagster as dg
import pytest

from cpt_assets.defs.metadata import (
    check_result,
    format_bytes,
    format_seconds,
    megabytes,
    numbers,
    outcome_result,
    short_hash,
    sig,
    table,
    text,
)


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (15.428671384346515, 4, 15.43),
        (3.158585786819458, 4, 3.159),
        (0.000123456, 3, 0.000123),
        (123456.789, 4, 123457.0),
        (0.0, 4, 0.0),
        (7, 4, 7),
        (float("nan"), 4, None),
        (None, 4, None),
    ],
)
def test_sig(value, digits, expected):
    assert sig(value, digits) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [(812, "812 B"), (4200, "4.2 kB"), (98_300_000, "98.3 MB"), (1_270_000_000, "1.27 GB"), (None, "-")],
)
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("s", "expected"), [(0.4213, "0.421 s"), (12.34, "12.3 s"), (252.0, "4.2 min"), (9000.0, "2.5 h")]
)
def test_format_seconds(s, expected):
    assert format_seconds(s) == expected


def test_small_helpers():
    assert megabytes(98_312_345) == 98.3
    assert short_hash("a" * 64) == "a" * 12
    assert short_hash(None) == "-"
    assert text([]) == "-" and text(None) == "-" and text(["a", "b"]) == "a, b"
    assert numbers({"ppl": 15.428671384346515, "missing": float("nan"), "none": None, "n": 3}) == {
        "ppl": 15.43,
        "n": 3,
    }


@dataclasses.dataclass
class Row:
    name: str
    value: float
    count: int


def test_table_from_dataclasses_has_schema_rounded_floats_and_short_text():
    value = table([Row("x" * 200, math.pi, 3), Row("y", 2.0, 4)], descriptions={"value": "what it is"})
    columns = {c.name: c for c in value.schema.columns}
    assert [c.name for c in value.schema.columns] == ["name", "value", "count"]
    assert columns["value"].type == "float" and columns["count"].type == "int" and columns["name"].type == "string"
    assert columns["value"].description == "what it is"
    first = value.records[0].data
    assert first["value"] == 3.142 and len(first["name"]) == 80 and first["name"].endswith("…")


def test_check_result_names_its_partition_and_rounds_metadata():
    result = check_result("c", True, "all good", partition="src", metadata={"ratio": 0.123456789, "empty": []})
    assert isinstance(result, dg.AssetCheckResult)
    assert result.description == "[src] all good"
    assert result.metadata["partition"].value == "src"
    assert result.metadata["ratio"].value == 0.1235
    assert result.metadata["empty"].value == "-"


def test_outcome_result_flattens_number_dicts_and_keeps_the_verdict():
    """A pure check's (passed, description, details) as a check result: dicts of numbers become plottable entries
    (`train_share`), other values display text, and the partition is named."""
    details = {"train": {"share": 0.712345, "target": 0.7}, "documents": {"s/a": "encrypted"}, "tokens": 42}
    result = outcome_result("split_ratios", (False, "train off target", details), "nist", dg.AssetCheckSeverity.WARN)
    assert result.passed is False and result.severity == dg.AssetCheckSeverity.WARN
    assert result.description == "[nist] train off target"
    assert result.metadata["train_share"].value == 0.7123 and result.metadata["train_target"].value == 0.7
    assert result.metadata["documents"].value == "s/a: encrypted"
    assert result.metadata["tokens"].value == 42
