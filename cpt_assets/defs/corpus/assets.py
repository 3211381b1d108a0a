"""Corpus assets: raw PDFs -> page text -> clean chunks, one partition per source; then leakage-free splits.

Thin wiring: each asset reads its inputs through `lib.lake`, calls the stage's plain functions and turns their
results into metadata. Every stage is incremental by content hash, so a scheduled refresh of an unchanged source
re-extracts nothing and says so.
"""

import hashlib
import time
from collections import Counter

import dagster as dg
import pydantic

from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.checks import (
    CLEAN_CHUNKS_CHECKS,
    PAGE_TEXT_CHECKS,
    RAW_PDFS_CHECKS,
    clean_chunks_results,
    page_text_results,
    raw_pdfs_results,
)
from cpt_assets.defs.metadata import (
    counts_table,
    format_bytes,
    megabytes,
    png_markdown,
    short_hash,
    table,
    text,
    timings_table,
)
from cpt_assets.defs.partitions import source_partitions
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.lib.base_model import load_tokenizer
from cpt_assets.lib.chunk_refresh import (
    chunk_tokenizer_dir,
    plot_token_histogram,
    read_state,
    refresh_chunks,
    write_state,
)
from cpt_assets.lib.chunking import CHUNKER_VERSION, ChunkingConfig
from cpt_assets.lib.lake import write_records
from cpt_assets.lib.pdf import extract_source
from cpt_assets.lib.sources import MirrorIndex, documents_found, fetch_documents, list_documents
from cpt_assets.lib.types import Chunk, DroppedChunk, Page, PageFailure, RawDocument

# Follow upstream materialisations (the scheduled raw_pdfs refresh) without a hand-made job per stage.
FOLLOW_UPSTREAM = dg.AutomationCondition.eager()
# The chunk preview samples across documents: a few chunks from each of the first documents, text cut short.
PREVIEW_DOCUMENTS, PREVIEW_PER_DOCUMENT, PREVIEW_CHARS = 10, 2, 48
MANIFEST_COLUMNS = ["name", "status", "pages", "size", "sha256"]  # origin, title, errors: parquet, failures table


def preview_chunks(chunks: list[Chunk]) -> list[Chunk]:
    """Up to PREVIEW_PER_DOCUMENT chunks from each of up to PREVIEW_DOCUMENTS documents, in document order."""
    taken: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        bucket = taken.setdefault(chunk.doc_id, [])
        if len(bucket) < PREVIEW_PER_DOCUMENT:
            bucket.append(chunk)
    return [chunk for bucket in list(taken.values())[:PREVIEW_DOCUMENTS] for chunk in bucket]


def content_version(hashes: list[str]) -> dg.DataVersion:
    """A data version from the documents' content hashes: unchanged PDFs, unchanged version."""
    return dg.DataVersion(hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16])


def chunks_version(chunks: list[Chunk]) -> dg.DataVersion:
    """clean_chunks' data version: its chunk ids in order (a chunk id hashes the text and where it came from)."""
    return dg.DataVersion(hashlib.sha256("".join(c.chunk_id for c in chunks).encode()).hexdigest()[:16])


@dg.asset(
    partitions_def=source_partitions,
    group_name="corpus",
    kinds={"pdf", "parquet"},
    check_specs=RAW_PDFS_CHECKS,
    description="The source's PDFs, fetched (mirror by sha256, then download with resume) and stored under "
    "data_lake/raw/source=NAME/, with a manifest row per document (failures included, with their reason).",
)
def raw_pdfs(context: dg.AssetExecutionContext, lake: LakeResource, sources: SourcesResource) -> dg.MaterializeResult:
    lk = lake.lake()
    registry = sources.load()
    source = registry.get(context.partition_key)
    refs = list_documents(source)
    previous = lk.read_manifest(source.name)
    mirror = MirrorIndex(registry.mirror) if registry.mirror and registry.mirror.is_dir() else None
    if registry.mirror and mirror is None:
        context.log.warning(f"mirror folder {registry.mirror} does not exist; downloading from the URLs instead")
    result = fetch_documents(source, refs, lk.raw_dir(source.name), mirror=mirror, previous=previous)
    write_records(result.rows, RawDocument, lk.manifest_path(source.name))

    before = {row.doc_id: row.sha256 for row in previous if row.status == "ok"}
    changed = [row.name for row in result.rows if row.status == "ok" and before.get(row.doc_id) != row.sha256]
    for row in result.failed:
        context.log.warning(f"{row.doc_id}: {row.error}")
    rows = [
        {
            "name": r.name,
            "status": r.status,
            "origin": r.origin,
            "pages": r.pages,
            "bytes": r.bytes,
            "size": format_bytes(r.bytes),
            "sha256": short_hash(r.sha256),
            "hash_mismatch": r.hash_mismatch,
            "title": r.title,
            "error": r.error,
        }
        for r in result.rows
    ]
    return dg.MaterializeResult(
        metadata={
            "source": source.name,
            "kind": source.kind,
            "documents": len(result.rows),
            "documents_ok": result.ok,
            "documents_failed": len(result.failed),
            "new_or_changed": len(changed),
            "unchanged": result.ok - len(changed),
            "pages": sum(r.pages for r in result.rows),
            "size_mb": megabytes(result.total_bytes),
            "downloaded_mb": megabytes(result.bytes_downloaded),
            "copied_mb": megabytes(result.bytes_copied),
            "origins": text(result.origins),
            "hash_mismatches": text([r.name for r in result.hash_mismatches]),
            "mirror": str(registry.mirror) if mirror else "not used",
            "seconds": round(result.seconds, 2),
            "manifest": table(rows, MANIFEST_COLUMNS, chars=28),
            "failures": table([r for r in rows if r["status"] == "failed"], ["name", "error"], chars=60),
            "path": dg.MetadataValue.path(str(lk.manifest_path(source.name))),
        },
        data_version=content_version([r.sha256 or "" for r in result.rows if r.status == "ok"]),
        check_results=raw_pdfs_results(source, refs, result.rows),
    )


@dg.asset(
    partitions_def=source_partitions,
    deps=[raw_pdfs],
    group_name="corpus",
    kinds={"pymupdf", "parquet"},
    automation_condition=FOLLOW_UPSTREAM,
    check_specs=PAGE_TEXT_CHECKS,
    description="Text of every page in reading order (pymupdf; OCR for image-only scans when the source enables "
    "it). Unreadable documents are rows of failures.parquet with their reason. Unchanged PDFs are reused.",
)
def page_text(context: dg.AssetExecutionContext, lake: LakeResource, sources: SourcesResource) -> dg.MaterializeResult:
    lk = lake.lake()
    source = sources.load().get(context.partition_key)
    manifest = lk.read_manifest(source.name)
    if not manifest and lk.manifest_path(source.name).exists():
        raise ValueError(f"raw_pdfs[{source.name}] found no documents: {documents_found(source, [])[1]}")
    if not manifest:
        raise FileNotFoundError(
            f"no manifest at {lk.manifest_path(source.name)}: materialise raw_pdfs[{source.name}] first"
        )
    result = extract_source(manifest, lk.read_pages(source.name), lk.read_page_failures(source.name), ocr=source.ocr)
    write_records(result.pages, Page, lk.pages_path(source.name))
    write_records(result.failures, PageFailure, lk.page_failures_path(source.name))
    for failure in result.failures:
        context.log.warning(f"{failure.doc_id}: {failure.error}")

    documents = [
        {
            "doc_id": d.doc_id,
            "status": d.status,
            "pages": d.pages,
            "chars": d.chars,
            "ocr_pages": d.ocr_pages,
            "seconds": round(d.seconds, 3),
            "error": d.error,
            "verdict": d.verdict,
            "reason": d.reason,
            "text_coverage": d.text_coverage,
            "garbage": d.garbage,
            "tables": d.tables,
        }
        for d in result.documents
    ]
    fetched = {row.doc_id for row in manifest if row.status == "ok"}
    return dg.MaterializeResult(
        metadata={
            "documents": len(result.documents),
            "documents_extracted": result.documents_extracted,
            "documents_reused": result.documents_reused,
            "documents_failed": result.documents_failed,
            "reextracted_nothing": result.documents_extracted == 0,
            "pages": len(result.pages),
            "pages_extracted": result.pages_extracted,
            "empty_pages": result.empty_pages,
            "ocr_pages": result.ocr_pages,
            "chars": result.chars,
            "seconds": round(result.seconds, 2),
            "pages_per_second": round(result.pages_per_second, 1),
            "documents_table": table(
                documents,
                ["doc_id", "status", "verdict", "pages", "chars", "text_coverage", "garbage", "reason"],
                chars=28,
            ),
            "documents_by_verdict": counts_table(result.verdicts, key="verdict"),
            "failures": table(
                [{"doc_id": f.doc_id, "error": f.error} for f in result.failures], ["doc_id", "error"], chars=60
            ),
            "path": dg.MetadataValue.path(str(lk.pages_path(source.name))),
        },
        data_version=content_version(list({f"{p.doc_id}:{p.doc_sha256}" for p in result.pages})),
        check_results=page_text_results(
            source.name,
            manifest,
            result.pages,
            result.failures,
            ((d.doc_id, d.verdict, d.reason) for d in result.documents if d.doc_id in fetched),
        ),
    )


class CleanChunksConfig(config_class(ChunkingConfig, "ChunkingRunConfig")):
    tokenizer: str = pydantic.Field(
        default="", description="HF tokenizer folder whose tokens size the chunks; empty: the base_model asset's"
    )


@dg.asset(
    partitions_def=source_partitions,
    deps=[page_text, "base_model"],  # chunks are sized in the base model's tokens: the graph shows that edge
    code_version=f"chunker-{CHUNKER_VERSION}",  # the UI marks chunks stale when the cleaning/chunking rules change
    group_name="corpus",
    kinds={"nltk", "parquet", "duckdb"},
    automation_condition=FOLLOW_UPSTREAM,
    check_specs=CLEAN_CHUNKS_CHECKS,
    description="Cleaned text (page furniture, TOCs, boilerplate, dotted leaders, hyphenation removed) cut into "
    "sentence-aware chunks of about target_tokens base-model tokens; exact duplicates dropped, near-duplicates "
    "marked. Only documents whose PDF changed are re-chunked.",
)
def clean_chunks(
    context: dg.AssetExecutionContext, config: CleanChunksConfig, lake: LakeResource
) -> dg.MaterializeResult:
    lk = lake.lake()
    source = context.partition_key
    if not lk.pages_path(source).exists():
        raise FileNotFoundError(f"no page text at {lk.pages_path(source)}: materialise page_text[{source}] first")
    tokenizer_dir, tokenizer_from = chunk_tokenizer_dir(lk, config.tokenizer)
    context.log.info(f"chunks sized with the tokenizer of {tokenizer_from} ({tokenizer_dir})")
    started = time.perf_counter()
    refresh = refresh_chunks(
        lk.read_pages(source),
        lk.read_chunks(source),
        lk.read_dropped(source),
        read_state(lk.chunk_state_path(source)),
        lk.splitter_path(source),
        tokenizer_dir,
        to_dataclass(config, ChunkingConfig),
        load_tokenizer=load_tokenizer,
    )
    write_records(refresh.chunks, Chunk, lk.chunks_path(source))
    write_records(refresh.dropped, DroppedChunk, lk.dropped_path(source))
    write_state(refresh.state, lk.chunk_state_path(source))
    context.log.info(refresh.reason)

    tokens = [c.n_tokens for c in refresh.chunks]
    histogram = plot_token_histogram(tokens, lk.token_histogram_path(source), f"{source}: tokens per chunk")
    dropped_reasons = dict(Counter(d.reason for d in refresh.dropped))
    result = refresh.result
    metadata = {
        "documents": len(refresh.state.documents),
        "documents_rechunked": len(refresh.rechunked),
        "documents_reused": len(refresh.reused),
        "documents_removed": len(refresh.removed),
        "rechunked_nothing": not refresh.rechunked,
        "refresh": refresh.reason,
        "chunks": len(refresh.chunks),
        "tokens": sum(tokens),
        "tokenizer_from": tokenizer_from,
        "tokens_per_chunk_mean": round(sum(tokens) / len(tokens), 1) if tokens else 0.0,
        "tokens_per_chunk_max": max(tokens, default=0),
        "dropped": len(refresh.dropped),
        "dropped_by_reason": counts_table(dropped_reasons),
        "near_duplicates": sum(1 for c in refresh.chunks if c.near_duplicate_of),
        "splitter_trained": refresh.splitter_trained,
        "seconds": round(time.perf_counter() - started, 2),
        "token_histogram": png_markdown(histogram, f"{source}: tokens per chunk"),
        "preview": table(
            [
                {"doc_id": c.doc_id, "chunk": c.chunk_index, "tokens": c.n_tokens, "text": c.text}
                for c in preview_chunks(refresh.chunks)
            ],
            ["doc_id", "chunk", "tokens", "text"],
            chars=PREVIEW_CHARS,
        ),
        "path": dg.MetadataValue.path(str(lk.chunks_path(source))),
    }
    if result is not None:
        metadata |= {
            "seconds_by_phase": timings_table(result.timings),
            "mb_per_second": round(result.chars_in / 1e6 / result.seconds, 3) if result.seconds else 0.0,
            "workers": result.workers,
            "mb_per_second_per_core": round(result.mb_per_s_per_core, 3),
            "pages_dropped_by_reason": counts_table(result.dropped_pages),
            "lines_removed_by_reason": counts_table(result.removed_lines),
            "edits": counts_table(result.edits, key="edit"),
            "token_counts_verified": result.token_counts_verified,
        }
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=chunks_version(refresh.chunks),
        check_results=clean_chunks_results(source, refresh.chunks),
    )
