"""The corpus area's asset checks: each check's spec (name, description, blocking) and its result.

The decisions are `lib.corpus_checks`' pure functions (and `documents_found`, `leakage_check`, `ratio_check` of
the stage modules); this module only names the checks and turns outcomes into Dagster results.
"""

from collections.abc import Iterable

import dagster as dg

from cpt_assets.defs.metadata import outcome_result
from cpt_assets.lib.corpus_checks import (
    documents_accounted_for,
    documents_with_useful_text,
    duplicate_chunks,
    empty_chunks,
    sources_included,
    unreadable_documents,
)
from cpt_assets.lib.sources import documents_found
from cpt_assets.lib.splits import SplitConfig, leakage_check, ratio_check
from cpt_assets.lib.types import Chunk, DocumentRef, Page, PageFailure, RawDocument, Source

RAW_PDFS_CHECKS = [
    dg.AssetCheckSpec(
        "all_pdfs_readable",
        asset="raw_pdfs",
        description="every PDF of this source was fetched and opens (a warning: failures stay as manifest rows)",
    ),
    # blocking: an empty source stops its run here, red, instead of failing page_text on an empty manifest
    dg.AssetCheckSpec(
        "source_has_documents", asset="raw_pdfs", blocking=True, description="the source lists at least one PDF"
    ),
]
PAGE_TEXT_CHECKS = [
    dg.AssetCheckSpec(
        "every_pdf_extracted_or_explained",
        asset="page_text",
        description="every document has page text or a failure row with its reason",
    ),
    dg.AssetCheckSpec(
        "every_pdf_yields_useful_text",
        asset="page_text",
        description="no fetched document's extraction verdict is no_text or unreadable",
    ),
]
CLEAN_CHUNKS_CHECKS = [
    dg.AssetCheckSpec(
        "no_empty_chunks",
        asset="clean_chunks",
        description="no chunk of this source is empty or has zero tokens after cleaning",
    ),
    dg.AssetCheckSpec(
        "no_duplicate_chunks",
        asset="clean_chunks",
        description="no chunk text occurs twice in this source (exact duplicates are dropped before training)",
    ),
]
SPLITS_CHECKS = [
    # Blocking: a leaked split stops the run before lora_adapter trains on it.
    dg.AssetCheckSpec(
        "no_document_in_two_splits",
        asset="corpus_splits",
        blocking=True,
        description="no document has chunks in two splits (blocking: nothing downstream runs on a leaked split)",
    ),
    dg.AssetCheckSpec(
        "split_ratios_within_tolerance",
        asset="corpus_splits",
        description="each split's share of tokens is within the configured tolerance of its target ratio "
        "(passes with a note when there are too few documents to split finer)",
    ),
    dg.AssetCheckSpec(
        "every_source_included", asset="corpus_splits", description="every registered source is in the splits"
    ),
]


def raw_pdfs_results(source: Source, refs: list[DocumentRef], rows: list[RawDocument]) -> list[dg.AssetCheckResult]:
    return [
        outcome_result("all_pdfs_readable", unreadable_documents(rows), source.name, dg.AssetCheckSeverity.WARN),
        outcome_result("source_has_documents", documents_found(source, refs), source.name),
    ]


def page_text_results(
    source: str,
    manifest: list[RawDocument],
    pages: list[Page],
    failures: list[PageFailure],
    verdicts: Iterable[tuple[str, str, str]],
) -> list[dg.AssetCheckResult]:
    """`verdicts`: (doc_id, verdict, reason) of the fetched documents."""
    return [
        outcome_result("every_pdf_extracted_or_explained", documents_accounted_for(manifest, pages, failures), source),
        outcome_result("every_pdf_yields_useful_text", documents_with_useful_text(verdicts), source),
    ]


def clean_chunks_results(source: str, chunks: list[Chunk]) -> list[dg.AssetCheckResult]:
    return [
        outcome_result("no_empty_chunks", empty_chunks(chunks), source),
        outcome_result("no_duplicate_chunks", duplicate_chunks(chunks), source),
    ]


def splits_results(
    rows: dict[str, list[Chunk]],
    token_share: dict[str, float],
    config: SplitConfig,
    documents: int,
    missing: dict[str, str],
) -> list[dg.AssetCheckResult]:
    return [
        outcome_result("no_document_in_two_splits", leakage_check(rows)),
        outcome_result("split_ratios_within_tolerance", ratio_check(token_share, config, documents)),
        outcome_result("every_source_included", sources_included(missing), severity=dg.AssetCheckSeverity.WARN),
    ]
