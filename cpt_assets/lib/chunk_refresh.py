"""Incremental re-chunking of one source: only documents whose PDF changed are cleaned and chunked again.

A scheduled refresh of an unchanged source should cost almost nothing and say so. The chunks of a document depend on
its PDF (sha256), the chunking settings, the tokenizer and the sentence splitter; the first three are recorded in a
small state file beside the chunks, and the splitter is saved once per source and reused, so adding a document never
changes the chunks of the others (their split assignment stays meaningful).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpt_assets.lib.chunking import (
    ChunkingConfig,
    ChunkResult,
    chunk_documents,
    group_pages,
    load_splitter,
    save_splitter,
    splitter_hash,
)
from cpt_assets.lib.cleaning import DEFAULT_SPECIAL_TOKENS
from cpt_assets.lib.dedup import NearDuplicateIndex, mark_near_duplicates, text_fingerprint
from cpt_assets.lib.lake import Lake, atomic_path
from cpt_assets.lib.types import Chunk, DroppedChunk, Page

STATE_VERSION = 1


@dataclass(frozen=True)
class ChunkState:
    """What the stored chunks were made from."""

    config_hash: str
    tokenizer_hash: str
    splitter_hash: str
    documents: dict[str, str] = field(default_factory=dict)  # doc_id -> sha256 of the PDF it was chunked from

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "config_hash": self.config_hash,
                "tokenizer_hash": self.tokenizer_hash,
                "splitter_hash": self.splitter_hash,
                "documents": self.documents,
            },
            indent=1,
            sort_keys=True,
        )


def read_state(path: Path) -> ChunkState | None:
    """The stored state, or None when there is none or it is from another version of this module."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if data.get("version") != STATE_VERSION:
        return None
    return ChunkState(data["config_hash"], data["tokenizer_hash"], data["splitter_hash"], dict(data["documents"]))


def write_state(state: ChunkState, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(state.to_json(), encoding="utf-8")
    return Path(path)


def tokenizer_hash(tokenizer_dir: Path) -> str:
    """sha256 of the tokenizer files that decide token ids (a different tokenizer means different token counts)."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model"):
        path = Path(tokenizer_dir) / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ChunkRefresh:
    """The source's chunks after a refresh, and what the refresh had to do."""

    chunks: list[Chunk]  # every kept chunk of the source: reused and new, document order
    dropped: list[DroppedChunk]
    state: ChunkState
    rechunked: list[str]  # doc_ids cleaned and chunked in this call
    reused: list[str]  # doc_ids whose stored chunks were kept
    removed: list[str]  # doc_ids no longer in the page text (their chunks are gone)
    reason: str  # why documents were (or were not) re-chunked
    result: ChunkResult | None  # counts and timings of the re-chunked documents; None when nothing was re-chunked
    splitter_trained: bool


def chunk_tokenizer_dir(lk: Lake, configured: str = "") -> tuple[Path, str]:
    """The tokenizer folder chunks are sized with, and where it came from.

    The base_model asset's tokenizer when it is materialised; before that, the default base model's tokenizer
    extracted once into the lake (what base_model exports by default). A change of base model changes the tokenizer
    files, so chunk_refresh's tokenizer hash re-chunks every document.
    """
    from cpt_assets.lib.base_model import default_tokenizer_dir

    if configured:
        return Path(configured), "the configured folder"
    if (lk.base_model_dir / "tokenizer.json").exists() or (lk.base_model_dir / "tokenizer_config.json").exists():
        return lk.base_model_dir, "the base_model asset"
    return default_tokenizer_dir(lk.tokenizer_cache_dir), "the default base model (base_model not materialised yet)"


def tokenizer_special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The special-token strings of a tokenizer (its added tokens marked special, and the named ones), sorted."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(token, "special", False):
            tokens.add(str(token.content))
    return tuple(sorted(tokens))


def with_tokenizer_special_tokens(config: ChunkingConfig, tokenizer: Any) -> ChunkingConfig:
    """The config whose cleaner strips the base model's own special tokens, not a list written for another model.

    Settings that name special tokens explicitly (not the default list) are kept as given. The state needs no new
    field: the tokenizer hash already changes when the tokenizer (and so its special tokens) does.
    """
    if config.cleaning.special_tokens != DEFAULT_SPECIAL_TOKENS:
        return config
    found = tokenizer_special_tokens(tokenizer)
    if not found:
        return config
    return replace(config, cleaning=replace(config.cleaning, special_tokens=found))


def refresh_chunks(
    pages: Sequence[Page],
    previous_chunks: Sequence[Chunk],
    previous_dropped: Sequence[DroppedChunk],
    previous_state: ChunkState | None,
    splitter_path: Path,
    tokenizer_dir: Path,
    config: ChunkingConfig,
    load_tokenizer: Any = None,
) -> ChunkRefresh:
    """Chunk what changed; keep the rest. The splitter is trained (and saved to `splitter_path`) when missing.

    Args:
        pages: the source's page text now.
        previous_chunks: the chunks the last run stored (empty on a first run).
        previous_dropped: the dropped chunks the last run stored.
        previous_state: the state the last run stored (None on a first run).
        splitter_path: where the source's Punkt parameters live.
        tokenizer_dir: the base model's tokenizer folder.
        config: chunking settings.
        load_tokenizer: callable(tokenizer_dir) -> tokenizer; only called when something must be chunked.
    """
    by_doc = group_pages(pages)
    current = {doc_id: doc_pages[0].doc_sha256 for doc_id, doc_pages in by_doc.items()}
    config_hash, tok_hash = config.config_hash(), tokenizer_hash(tokenizer_dir)
    splitter = load_splitter(splitter_path) if Path(splitter_path).exists() else None

    if previous_state is None:
        reason = "first run: every document chunked"
        valid = False
    elif previous_state.config_hash != config_hash:
        reason = "chunking settings changed: every document re-chunked"
        valid = False
        splitter = None  # cleaning settings shape the text the splitter learns from
    elif previous_state.tokenizer_hash != tok_hash:
        reason = "tokenizer changed: every document re-chunked"
        valid = False
    elif splitter is None or splitter_hash(splitter) != previous_state.splitter_hash:
        reason = "sentence splitter missing or changed: every document re-chunked"
        valid = False
    else:
        valid = True
        reason = ""
    known = previous_state.documents if valid and previous_state else {}
    reused = sorted(d for d, sha in current.items() if known.get(d) == sha)
    rechunk = sorted(d for d in current if d not in reused)
    removed = sorted(set(previous_state.documents) - set(current)) if previous_state else []
    if valid:
        reason = (
            f"{len(rechunk)} new or changed document(s) chunked, {len(reused)} unchanged reused"
            if rechunk
            else f"nothing changed: {len(reused)} document(s) reused, none re-chunked"
        )

    reused_set = set(reused)
    kept_chunks = [c for c in previous_chunks if c.doc_id in reused_set]
    kept_dropped = [d for d in previous_dropped if d.doc_id in reused_set]
    result = None
    splitter_trained = False
    if rechunk:
        tokenizer = load_tokenizer(tokenizer_dir)
        config = with_tokenizer_special_tokens(config, tokenizer)
        seen = {text_fingerprint(c.text): c.chunk_id for c in kept_chunks}
        near_index = NearDuplicateIndex(config.dedup)
        if kept_chunks:
            mark_near_duplicates(kept_chunks, index=near_index)
        # Without a splitter nothing is valid, so `rechunk` is every document: the splitter learns from all of them.
        result = chunk_documents({d: by_doc[d] for d in rechunk}, tokenizer, splitter, config, seen, near_index)
        if splitter is None and result.splitter is not None:
            splitter, splitter_trained = result.splitter, True
            save_splitter(splitter, splitter_path)
        kept_chunks = kept_chunks + result.chunks
        kept_dropped = kept_dropped + result.dropped
    kept_chunks.sort(key=lambda c: (c.doc_id, c.chunk_index))
    kept_dropped.sort(key=lambda d: (d.doc_id, d.chunk_index))
    state = ChunkState(
        config_hash, tok_hash, splitter_hash(splitter) if splitter is not None else "", dict(sorted(current.items()))
    )
    return ChunkRefresh(
        chunks=kept_chunks,
        dropped=kept_dropped,
        state=state,
        rechunked=rechunk,
        reused=reused,
        removed=removed,
        reason=reason,
        result=result,
        splitter_trained=splitter_trained,
    )


def plot_token_histogram(token_counts: Sequence[int], path: Path, title: str) -> Path:
    """Histogram of chunk lengths in tokens (PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=100)
    axis.hist(list(token_counts) or [0], bins=40, color="#4f6bed")
    axis.set_xlabel("tokens per chunk")
    axis.set_ylabel("chunks")
    axis.set_title(title)
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)
