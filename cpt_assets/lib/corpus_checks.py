"""Pure check functions behind the corpus asset checks: each returns (passed, description, details)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cpt_assets.lib.types import CheckOutcome, Chunk, Page, PageFailure, RawDocument


def unreadable_documents(manifest: Iterable[RawDocument]) -> CheckOutcome:
    """Documents that could not be fetched or opened, with their reasons (a warning, not a hard failure)."""
    failed = {row.doc_id: row.error for row in manifest if row.status != "ok"}
    if failed:
        return False, f"{len(failed)} document(s) could not be fetched or opened", failed
    return True, "every document was fetched and opens", {}


def documents_accounted_for(
    manifest: Iterable[RawDocument], pages: Iterable[Page], failures: Iterable[PageFailure]
) -> CheckOutcome:
    """Every manifest document has pages or a failure row with a non-empty reason."""
    with_pages = {page.doc_id for page in pages}
    reasons = {failure.doc_id: failure.error for failure in failures}
    missing = [row.doc_id for row in manifest if row.doc_id not in with_pages and not reasons.get(row.doc_id)]
    if missing:
        return False, f"{len(missing)} document(s) neither extracted nor recorded with a reason", {"missing": missing}
    return (
        True,
        "every document is either extracted or recorded with a reason",
        {
            "extracted": len(with_pages),
            "failed_with_reason": len(reasons),
        },
    )


def empty_chunks(chunks: Iterable[Chunk]) -> CheckOutcome:
    empty = [c.chunk_id for c in chunks if not c.text.strip() or c.n_tokens <= 0]
    if empty:
        return False, f"{len(empty)} empty chunk(s)", {"chunk_ids": empty[:20]}
    return True, "no empty chunks", {}


def duplicate_chunks(chunks: Iterable[Chunk]) -> CheckOutcome:
    counts = Counter(c.chunk_id for c in chunks)
    duplicated = {chunk_id: n for chunk_id, n in counts.items() if n > 1}
    if duplicated:
        return False, f"{len(duplicated)} chunk text(s) occur more than once", {"chunk_ids": list(duplicated)[:20]}
    return True, "no exact duplicate chunks", {}


def documents_with_useful_text(documents: Iterable[tuple[str, str, str]]) -> CheckOutcome:
    """Red when a fetched document yielded no useful text: its extraction verdict is no_text or unreadable.

    Args:
        documents: (doc_id, verdict, reason) per document that was fetched (pdf.DocumentText rows); partial
            documents pass (their pages say what is missing).
    """
    rows = list(documents)
    bad = {doc_id: f"{verdict}: {reason}" for doc_id, verdict, reason in rows if verdict in ("no_text", "unreadable")}
    partial = sorted(doc_id for doc_id, verdict, _ in rows if verdict == "partial")
    if bad:
        return False, f"{len(bad)} document(s) yielded no useful text", {"documents": bad, "partial": partial}
    return True, "every document yielded useful text", {"partial": partial} if partial else {}


def sources_included(missing: dict[str, str]) -> CheckOutcome:
    """Every registered source is in the splits; `missing`: source -> why its chunks were left out."""
    if missing:
        return False, f"missing: {', '.join(missing)}", {"missing": missing}
    return True, "every source", {}
