"""Exact and near-duplicate detection for chunks.

Standards repeat themselves: the same legal paragraph in every NIST publication, the same BCP 14 keyword paragraph
in every RFC, a revised publication that copies most of its predecessor. Exact duplicates (equal text after
normalising case, whitespace and punctuation) are dropped, keeping the first occurrence, and recorded with reason
"duplicate" so they stay inspectable. Near duplicates (MinHash LSH over word shingles, `datasketch`) are reported,
not dropped: a revision that changes a few words is still new text worth training on, but a user should see how much
of the corpus it is, so the later chunk's `near_duplicate_of` names the earlier one.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from datasketch import MinHash, MinHashLSH

from cpt_assets.lib.types import Chunk, DroppedChunk

_NON_WORD_RE = re.compile(r"[\W_]+")


@dataclass(frozen=True, slots=True)
class DedupConfig:
    """Near-duplicate settings; exact duplicates need none."""

    near_duplicate_threshold: float = 0.8  # estimated Jaccard similarity of word shingles that counts as near-dup
    num_perm: int = 128  # MinHash permutations: more is more precise and slower
    shingle_words: int = 5  # words per shingle (5-grams, as in datatrove's MinHash deduplication defaults)
    seed: int = 1  # MinHash permutation seed, fixed so reports are reproducible

    def __post_init__(self) -> None:
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(
                f"DedupConfig.near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}"
            )
        if self.num_perm < 16:
            raise ValueError(f"DedupConfig.num_perm must be >= 16, got {self.num_perm}")
        if self.shingle_words < 1:
            raise ValueError(f"DedupConfig.shingle_words must be >= 1, got {self.shingle_words}")


def normalize_for_hash(text: str) -> str:
    """Lowercase, punctuation and whitespace runs as one space: what "the same text" means for exact dedup."""
    return _NON_WORD_RE.sub(" ", text.lower()).strip()


def text_fingerprint(text: str) -> str:
    """sha256 of the normalised text."""
    return hashlib.sha256(normalize_for_hash(text).encode("utf-8")).hexdigest()


def as_dropped(chunk: Chunk, reason: str) -> DroppedChunk:
    return DroppedChunk(
        chunk_id=chunk.chunk_id,
        doc_id=chunk.doc_id,
        source=chunk.source,
        chunk_index=chunk.chunk_index,
        text=chunk.text,
        reason=reason,
    )


def drop_exact_duplicates(
    chunks: Iterable[Chunk], seen: dict[str, str] | None = None
) -> tuple[list[Chunk], list[DroppedChunk]]:
    """Keep the first chunk of each normalised text; later copies become DroppedChunk(reason="duplicate").

    Args:
        chunks: Chunks in a stable order (document, then chunk index): "first" is first in this order.
        seen: Fingerprint -> chunk_id of texts kept earlier (e.g. by other sources); updated in place, so one dict
            carried across calls deduplicates across sources.

    Returns:
        Kept chunks and dropped duplicates.
    """
    seen = {} if seen is None else seen
    kept: list[Chunk] = []
    dropped: list[DroppedChunk] = []
    for chunk in chunks:
        fingerprint = text_fingerprint(chunk.text)
        if fingerprint in seen:
            dropped.append(as_dropped(chunk, "duplicate"))
        else:
            seen[fingerprint] = chunk.chunk_id
            kept.append(chunk)
    return kept, dropped


def cross_source_duplicates(chunks_by_source: Mapping[str, Sequence[Chunk]]) -> list[DroppedChunk]:
    """Chunks whose text already appears in a source earlier in name order (each source deduplicated alone first).

    A source-partitioned run cannot see other sources; this is for a downstream, unpartitioned step (splits, checks)
    that reads every source's chunks.
    """
    seen: dict[str, str] = {}
    dropped: list[DroppedChunk] = []
    for source in sorted(chunks_by_source):
        _, duplicates = drop_exact_duplicates(chunks_by_source[source], seen)
        dropped.extend(duplicates)
    return dropped


def shingles(text: str, size: int) -> list[bytes]:
    """Word n-grams of the normalised text as bytes (the whole text as one shingle when it has fewer words).

    The normalised text has single spaces between words, so each shingle is a slice of its bytes: no joins.
    """
    data = normalize_for_hash(text).encode("utf-8")
    if not data:
        return []
    words = data.split(b" ")
    if len(words) <= size:
        return [data]
    starts = [0, *itertools.accumulate(len(word) + 1 for word in words)]
    return [data[starts[i] : starts[i + size] - 1] for i in range(len(words) - size + 1)]


class NearDuplicateIndex:
    """MinHash LSH over chunks, queried in insertion order: each chunk is compared only with earlier ones."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self.lsh = MinHashLSH(threshold=self.config.near_duplicate_threshold, num_perm=self.config.num_perm)
        self.minhashes: dict[str, MinHash] = {}
        self.order: dict[str, int] = {}

    def minhash_batch(self, texts: Sequence[str]) -> list[MinHash]:
        return MinHash.bulk(
            (shingles(text, self.config.shingle_words) for text in texts),
            num_perm=self.config.num_perm,
            seed=self.config.seed,
            hashfunc=zlib.crc32,  # C speed and the 32 bits "affine32" MinHash expects; SHA1 per shingle is slower
        )

    def add(self, key: str, minhash: MinHash) -> str | None:
        """Insert `key`; return the earliest inserted key estimated at least `threshold` similar, if any."""
        match: str | None = None
        if key in self.minhashes:
            return None
        best_order = None
        for candidate in map(str, self.lsh.query(minhash)):
            if minhash.jaccard(self.minhashes[candidate]) >= self.config.near_duplicate_threshold:
                order = self.order[candidate]
                if best_order is None or order < best_order:
                    match, best_order = candidate, order
        self.lsh.insert(key, minhash)
        self.minhashes[key] = minhash
        self.order[key] = len(self.order)
        return match


def mark_near_duplicates(
    chunks: Sequence[Chunk], config: DedupConfig | None = None, index: NearDuplicateIndex | None = None
) -> tuple[list[Chunk], int]:
    """Set `near_duplicate_of` on each chunk that resembles an earlier one (in this call or in `index`).

    Args:
        chunks: Chunks in a stable order, exact duplicates already removed.
        config: Threshold, permutations and shingle size; ignored when `index` is given.
        index: An index carried across calls (e.g. across sources); a new one when None.

    Returns:
        The chunks (near duplicates replaced with `near_duplicate_of` set) and how many were marked.
    """
    index = index or NearDuplicateIndex(config)
    minhashes = index.minhash_batch([chunk.text for chunk in chunks])
    marked = 0
    out: list[Chunk] = []
    for chunk, minhash in zip(chunks, minhashes, strict=True):
        match = index.add(chunk.chunk_id, minhash)
        if match is not None and match != chunk.chunk_id:
            chunk = replace(chunk, near_duplicate_of=match)
            marked += 1
        out.append(chunk)
    return out, marked
