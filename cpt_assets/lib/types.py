"""Records that cross stage boundaries.

Each stage writes lists of these to parquet through `lib.lake`; keeping them as dataclasses (not loose dicts)
means a column is named once and every stage agrees on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

# What a pure check function returns: (passed, description, details for the check's metadata).
CheckOutcome = tuple[bool, str, dict[str, Any]]

SourceKind = Literal["pdf_folder", "url_list"]
DocStatus = Literal["ok", "failed"]


@dataclass(frozen=True, slots=True)
class Source:
    """One entry of the sources registry: one Dagster partition."""

    name: str  # partition key; [a-z0-9_-]+
    kind: SourceKind  # "pdf_folder": a local folder of PDFs; "url_list": a CSV of url,sha256,name
    location: Path  # folder (pdf_folder) or CSV file (url_list), resolved against the registry's folder
    ocr: bool = False  # OCR pages without a text layer (needs Debian's tesseract-ocr)
    description: str = ""


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """A document a source promises, before it is fetched."""

    source: str
    name: str  # file name inside the source, unique per source; also the document's identity
    url: str | None = None  # official address (url_list sources)
    sha256: str | None = None  # pinned content hash, if the registry gives one
    path: Path | None = None  # local file (pdf_folder sources)

    @property
    def doc_id(self) -> str:
        return f"{self.source}/{self.name}"


@dataclass(frozen=True, slots=True)
class RawDocument:
    """A manifest row of the raw_pdfs asset: one per document, failed ones included."""

    doc_id: str  # "source/name": stable across content changes, so a re-issued PDF keeps its split
    source: str
    name: str
    status: DocStatus
    path: str | None = None  # the stored copy under data_lake/raw/
    url: str | None = None
    sha256: str | None = None  # hash of the stored bytes
    pinned_sha256: str | None = None  # hash the registry expected
    bytes: int = 0
    pages: int = 0
    title: str = ""
    origin: str = ""  # "mirror", "download", "cached", "folder"
    hash_mismatch: bool = False  # True when the stored bytes differ from the pinned hash
    error: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    """Text of one PDF page in reading order."""

    doc_id: str
    source: str
    doc_sha256: str
    page_number: int  # 1-based
    text: str
    chars: int
    method: str = "text"  # "text" (text layer) or "ocr"
    status: str = "ok"  # extraction verdict of the page: ok, partial (noisy), no_text (image only), unreadable
    reason: str = ""  # why the status is not ok ("" when ok)
    garbage: float = 0.0  # share of non-space characters that are not text (text_quality.score_text)
    tables: int = 0  # tables found by pymupdf's table finder and written as markdown rows
    status: str = "ok"  # extraction verdict of the page: ok, partial (noisy), no_text (image only), unreadable
    reason: str = ""  # why the status is not ok ("" when ok)
    garbage: float = 0.0  # share of non-space characters that are not text (text_quality.score_text)
    tables: int = 0  # tables found by pymupdf's table finder and written as markdown rows


@dataclass(frozen=True, slots=True)
class PageFailure:
    """A document the page-text stage could not read, with the reason."""

    doc_id: str
    source: str
    doc_sha256: str
    error: str
    status: str = "unreadable"  # the document's extraction verdict: unreadable (bad bytes or junk text) or no_text


@dataclass(frozen=True, slots=True)
class Chunk:
    """A cleaned, sentence-aligned span of one document, sized in base-model tokens."""

    chunk_id: str  # sha256 of the text: equal text, equal id
    doc_id: str
    source: str
    doc_sha256: str
    chunk_index: int
    text: str
    n_tokens: int
    n_chars: int
    near_duplicate_of: str | None = None  # chunk_id of an earlier near-duplicate (reported, kept)


@dataclass(frozen=True, slots=True)
class DroppedChunk:
    """A chunk removed by a filter, kept inspectable with the filter's reason."""

    chunk_id: str
    doc_id: str
    source: str
    chunk_index: int
    text: str
    reason: str  # "empty", "duplicate", "too_short", ...


@dataclass(frozen=True, slots=True)
class ScoredBlocks:
    """Token blocks of the test split and one model's per-token NLL on them.

    Written by the evaluation (the adapted model, the figure eval_report shows) and read by GGUF verification, which
    scores these very blocks with llama.cpp: one HF test perplexity per model, computed once.
    """

    model: str  # which model's losses: "adapted"
    dtype: str  # torch dtype the losses were computed in ("float32", ...)
    block_size: int
    separator_id: int  # the document separator in the stream (scoring.document_separator_id)
    sources: tuple[str, ...]  # the source of each block
    blocks: tuple[tuple[int, ...], ...]  # token ids
    token_nll: tuple[tuple[float, ...], ...]  # NLL of tokens[1:] of each block (nats)
    adapter_sha256: str = ""  # the adapter weights scored: a consumer checks it is the adapter it has

    def __post_init__(self) -> None:
        if not len(self.sources) == len(self.blocks) == len(self.token_nll):
            raise ValueError(
                f"ScoredBlocks needs one source and one NLL row per block, got {len(self.sources)} sources, "
                f"{len(self.blocks)} blocks and {len(self.token_nll)} NLL rows"
            )
        for index, (block, nll) in enumerate(zip(self.blocks, self.token_nll, strict=True)):
            if len(nll) != len(block) - 1:
                raise ValueError(f"ScoredBlocks block {index} has {len(block)} tokens but {len(nll)} NLL values")

    @property
    def tokens(self) -> int:
        """Predicted (scored) tokens over all blocks."""
        return sum(len(nll) for nll in self.token_nll)

    def flat_nll(self) -> list[float]:
        return [value for nll in self.token_nll for value in nll]


def to_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Dataclasses to plain dicts, Paths as strings, for parquet."""
    rows = []
    for record in records:
        row = asdict(record)
        for key, value in row.items():
            if isinstance(value, Path):
                row[key] = str(value)
        rows.append(row)
    return rows


def column_names(record_type: type) -> list[str]:
    return [f.name for f in fields(record_type)]
