"""Helpers that turn lib results into Dagster metadata a user can judge a run by in the UI.

Every figure is rounded and given a unit for reading (full precision stays in the JSON files under data_lake/);
tables are `MetadataValue.table` with a schema and short cells, so they fit the asset page; the numbers a user
compares over time are plain numbers under stable keys, because Dagster 1.13 plots only numeric metadata across
materialisations. Check results carry the partition they judged and a few numbers, so their Plots are not empty.
"""

import base64
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import dagster as dg

from cpt_assets.lib.types import CheckOutcome

# Longest cell a table shows before it is cut with "…" (the full text is in the lake's files).
CELL_CHARS = 80
# Characters of a sha256 shown in the UI; the full hash is in the JSON/parquet files beside the artefact.
HASH_CHARS = 12


def sig(value: float | int | None, digits: int = 4) -> float | int | None:
    """`value` rounded to `digits` significant digits (never below units; ints unchanged); None if not finite."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def megabytes(n_bytes: int | float) -> float:
    """A byte count as MB (10^6), to 3 significant digits: a number to plot under a key ending in `_mb`."""
    return float(sig(n_bytes / 1e6, 3) or 0.0)


def format_bytes(n_bytes: int | float | None) -> str:
    """'812 B', '4.2 kB', '98.3 MB', '1.27 GB' (decimal units, as file browsers show)."""
    if n_bytes is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= scale:
            return f"{sig(n_bytes / scale, 3):g} {unit}"
    return f"{int(n_bytes)} B"


def format_seconds(seconds: float | None) -> str:
    """'0.42 s', '12.3 s', '4.2 min', '1.5 h'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{sig(seconds, 3):g} s"
    if seconds < 7200:
        return f"{sig(seconds / 60, 3):g} min"
    return f"{sig(seconds / 3600, 3):g} h"


def short_hash(value: str | None, chars: int = HASH_CHARS) -> str:
    """The first `chars` characters of a hash, for display; '-' when there is none."""
    return value[:chars] if value else "-"


def text(value: Any, missing: str = "-") -> str:
    """A value as display text: lists joined with ', ', empty values as `missing` (never '[]' or 'none')."""
    if value is None or value == "" or (isinstance(value, (list, tuple, set, dict)) and not value):
        return missing
    if isinstance(value, dict):
        return ", ".join(f"{k}: {text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ", ".join(text(v) for v in value)
    if isinstance(value, float):
        return f"{sig(value):g}"
    return str(value)


def _cell(value: Any, chars: int, digits: int) -> Any:
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        return sig(value, digits)
    shown = text(value).replace("\n", " ")
    return shown if len(shown) <= chars else shown[: chars - 1] + "…"


def _row_dict(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    return dict(cast(Mapping[str, Any], row))


def _column_type(values: Iterable[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def table(
    rows: Iterable[Any],
    columns: Sequence[str] | None = None,
    *,
    descriptions: Mapping[str, str] | None = None,
    chars: int = CELL_CHARS,
    digits: int = 4,
    limit: int | None = None,
) -> dg.MetadataValue:
    """A `MetadataValue.table` from dataclasses or dicts, sized to fit the asset page.

    The UI gives a table a value column about 380 px wide (1440 px window): keep to 4-5 short columns.
    Typed schema, floats to `digits` significant digits, text cut at `chars` characters, at most `limit` rows;
    `columns` picks and orders columns (default: all of the first row's), `descriptions` explains columns.
    """
    dicts = [_row_dict(r) for r in rows]
    if limit is not None:
        dicts = dicts[:limit]
    names = list(columns) if columns is not None else (list(dicts[0]) if dicts else [])
    cells = [{c: _cell(d.get(c), chars, digits) for c in names} for d in dicts]
    descriptions = descriptions or {}
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(c, _column_type(row[c] for row in cells), description=descriptions.get(c)) for c in names
        ]
    )
    return dg.MetadataValue.table(records=[dg.TableRecord(row) for row in cells], schema=schema)


def counts_table(counts: Mapping[str, int], key: str = "reason", value: str = "count") -> dg.MetadataValue:
    """A two-column table of counts, largest first (dropped chunks by reason, lines removed by rule...)."""
    return table([{key: k, value: v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])], [key, value])


def timings_table(seconds: Mapping[str, float]) -> dg.MetadataValue:
    """Seconds by phase as a table with a readable duration column (instead of a JSON blob)."""
    return table(
        [{"phase": k, "seconds": sig(v, 3)} for k, v in seconds.items()],
        ["phase", "seconds"],
    )


def numbers(values: Mapping[str, float | int | bool | None], digits: int = 4) -> dict[str, Any]:
    """Figures to plot over materialisations: stable keys, plain numbers to `digits` significant digits.

    Figures not computed (None, NaN) are left out rather than shown as 'none'.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        rounded = sig(value, digits)
        if rounded is not None:
            out[key] = rounded
    return out


def png_markdown(path: Path, title: str = "") -> dg.MetadataValue:
    """Embed a PNG in markdown metadata, so the chart shows in the asset's page without leaving the UI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(
        f"{'### ' + title if title else ''}\n\n![{title or path.name}](data:image/png;base64,{data})"
    )


def _md_cell(value: Any, width: int) -> str:
    shown = text(value).replace("\n", " ").replace("|", "\\|")
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], width: int = 80) -> str:
    """A markdown table of `rows` (dicts) restricted to `columns`; long cells are shortened."""
    if not rows:
        return "_(no rows)_"
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(_md_cell(row.get(c, ""), width) for c in columns) + " |" for row in rows)
    return header + body


def outcome_result(
    name: str,
    outcome: CheckOutcome,
    partition: str | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """An AssetCheckResult from a pure check function's (passed, description, details), naming its partition.

    Details that are dicts of numbers become one plottable entry per key (`train_share`, `train_target`).
    """
    passed, description, details = outcome
    metadata: dict = {}
    for key, value in details.items():
        if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            metadata |= {f"{key}_{sub}": v for sub, v in value.items()}
        else:
            metadata[key] = value if isinstance(value, (int, float, dg.MetadataValue)) else text(value)
    return check_result(name, passed, description, partition=partition, metadata=metadata, severity=severity)


def check_result(
    name: str,
    passed: bool,
    description: str,
    *,
    partition: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """An AssetCheckResult that says which partition it judged and carries a few numbers.

    The partition goes into the description and a `partition` metadata entry; numbers are rounded and plotted over
    runs on the check's page.
    """
    meta: dict[str, Any] = {}
    if partition:
        meta["partition"] = partition
        description = f"[{partition}] {description}"
    for key, value in (metadata or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rounded = sig(value)
            if rounded is not None:
                meta[key] = rounded
        elif value is not None:
            meta[key] = value if isinstance(value, (bool, dg.MetadataValue)) else text(value)
    return dg.AssetCheckResult(
        check_name=name, passed=bool(passed), severity=severity, description=description, metadata=meta
    )
