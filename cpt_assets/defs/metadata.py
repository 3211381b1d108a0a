"""Helpers that turn lib results into Dagster metadata a user can judge a run by in the UI."""

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg


def png_markdown(path: Path, title: str = "") -> dg.MetadataValue:
    """Embed a PNG in markdown metadata, so the chart shows in the asset's page without leaving the UI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(
        f"{'### ' + title if title else ''}\n\n![{title or path.name}](data:image/png;base64,{data})"
    )


def _cell(value: Any, width: int) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], width: int = 80) -> str:
    """A markdown table of `rows` (dicts) restricted to `columns`; long cells are shortened."""
    if not rows:
        return "_(no rows)_"
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(_cell(row.get(c, ""), width) for c in columns) + " |" for row in rows)
    return header + body


def table_value(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> dg.MetadataValue:
    """A `MetadataValue.table` (sortable in the UI) with string/number cells."""
    records = []
    for row in rows:
        records.append(
            dg.TableRecord(
                {c: row.get(c) if isinstance(row.get(c), (int, float, bool)) else str(row.get(c, "")) for c in columns}
            )
        )
    schema_types = {}
    for column in columns:
        sample = next((r.data[column] for r in records if r.data.get(column) is not None), "")
        schema_types[column] = (
            "bool"
            if isinstance(sample, bool)
            else "int"
            if isinstance(sample, int)
            else "float"
            if isinstance(sample, float)
            else "string"
        )
    schema = dg.TableSchema(columns=[dg.TableColumn(c, schema_types[c]) for c in columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def counts_md(counts: dict[str, int], key: str = "reason", value: str = "count") -> dg.MetadataValue:
    rows = [{key: k, value: v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return dg.MetadataValue.md(markdown_table(rows, [key, value]))
