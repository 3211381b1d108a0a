"""Train/validation/test splits by document.

A split is assigned per document, never per chunk, so no document's text is both trained on and tested on. Earlier
assignments are kept (a document keeps its split when others are added or when it is re-issued), and new documents
fill whichever split is furthest below its target share of tokens, per source, largest documents first: with a few
dozen documents of very different sizes, hashing alone would miss 70/20/10 by many points, and balancing per source
gives every source rows in every split (per-source perplexity needs them).

Chunks whose exact text also sits in an earlier split (boilerplate shared by two documents) are removed from the
later split, so even shared paragraphs do not leak from train into evaluation.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from cpt_assets.lib.types import Chunk

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True, slots=True)
class SplitConfig:
    train: float = 0.7  # share of tokens for training
    validation: float = 0.2  # share of tokens for validation during training
    test: float = 0.1  # share of tokens held out for the evaluation report
    tolerance: float = 0.02  # the splits check allows this much deviation from the ratios (2 points)

    def __post_init__(self) -> None:
        for name in SPLITS:
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"split ratio {name}={value} must be within [0, 1]")
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got train+validation+test={total:.4f}")
        if self.train <= 0:
            raise ValueError(f"split ratio train={self.train} must be > 0: the adapter needs training data")

    def ratios(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SPLITS}


@dataclass(frozen=True, slots=True)
class Assignment:
    doc_id: str
    source: str
    split: str
    doc_tokens: int


@dataclass(slots=True)
class SplitResult:
    assignments: list[Assignment]
    rows: dict[str, list[Chunk]]  # split -> chunks
    new_documents: int = 0  # documents assigned in this run
    kept_documents: int = 0  # documents that kept an earlier assignment
    cross_split_duplicates: int = 0  # chunks dropped from validation/test because train (or validation) has them
    token_share: dict[str, float] = field(default_factory=dict)
    chunk_share: dict[str, float] = field(default_factory=dict)

    def split_hash(self, split: str) -> str:
        return split_content_hash(self.rows[split])


def split_content_hash(chunks: list[Chunk]) -> str:
    """Content hash of a split (its chunk ids in document order): what provenance records, whatever the file format."""
    digest = hashlib.sha256()
    for chunk in sorted(chunks, key=lambda c: (c.doc_id, c.chunk_index)):
        digest.update(chunk.chunk_id.encode())
    return digest.hexdigest()


def assign_documents(
    doc_tokens: dict[str, tuple[str, int]],
    previous: dict[str, str],
    config: SplitConfig,
) -> dict[str, str]:
    """Assign each document to a split.

    Args:
        doc_tokens: doc_id -> (source, token count) of every document that has chunks.
        previous: doc_id -> split from earlier runs; kept as they are.
        config: target ratios.

    Returns:
        doc_id -> split for every document in `doc_tokens`.
    """
    ratios = config.ratios()
    assigned = {doc: previous[doc] for doc in doc_tokens if previous.get(doc) in SPLITS}
    by_source: dict[str, list[str]] = defaultdict(list)
    for doc_id, (source, _) in doc_tokens.items():
        by_source[source].append(doc_id)
    for _source, docs in sorted(by_source.items()):
        totals: dict[str, int] = dict.fromkeys(SPLITS, 0)
        for doc in docs:
            if doc in assigned:
                totals[assigned[doc]] += doc_tokens[doc][1]
        grand = sum(doc_tokens[doc][1] for doc in docs)
        # Largest first, ties by id: deterministic, and small documents end up fine-tuning the balance.
        for doc in sorted((d for d in docs if d not in assigned), key=lambda d: (-doc_tokens[d][1], d)):
            # Relative deficit: an empty split counts as 100% short whatever its ratio, so a source with three
            # documents gives one to each split rather than three to train.
            deficit = {name: 1 - totals[name] / (ratios[name] * grand) for name in SPLITS if ratios[name] > 0}
            choice = max(deficit, key=lambda name: (deficit[name], ratios[name]))
            assigned[doc] = choice
            totals[choice] += doc_tokens[doc][1]
    movable = [doc for doc in doc_tokens if previous.get(doc) not in SPLITS]
    return rebalance(assigned, doc_tokens, movable, config)


MAX_REBALANCE_ROUNDS = 64  # improving moves/swaps applied at most
MAX_SWAP_DOCUMENTS = 300  # pairwise swaps are tried only below this many new documents (quadratic)


def rebalance(
    assigned: dict[str, str], doc_tokens: dict[str, tuple[str, int]], movable: list[str], config: SplitConfig
) -> dict[str, str]:
    """Move or swap newly assigned documents while that lowers the worst deviation from the ratios overall.

    The per-source greedy pass keeps every source in every split, but summed over sources the shares can miss the
    ratios by a few points; single moves and pairwise swaps of this run's new documents close that gap without
    touching earlier assignments or taking a source out of a split it is in.
    """
    assigned = dict(assigned)
    ratios = config.ratios()
    totals: dict[str, int] = dict.fromkeys(SPLITS, 0)
    count: dict[tuple[str, str], int] = defaultdict(int)
    for doc, split in assigned.items():
        totals[split] += doc_tokens[doc][1]
        count[(doc_tokens[doc][0], split)] += 1
    grand = sum(totals.values()) or 1

    def worst(changed: dict[str, int]) -> float:
        return max(abs((totals[name] + changed.get(name, 0)) / grand - ratios[name]) for name in SPLITS)

    best = worst({})
    for _ in range(MAX_REBALANCE_ROUNDS):
        improved: tuple[float, dict[str, str]] | None = None
        for doc in movable:
            source, tokens = doc_tokens[doc]
            here = assigned[doc]
            if count[(source, here)] == 1:
                continue  # the source's only document in this split stays
            for split in SPLITS:
                if split != here:
                    deviation = worst({here: -tokens, split: tokens})
                    if deviation < best - 1e-12 and (improved is None or deviation < improved[0]):
                        improved = (deviation, {doc: split})
        if len(movable) <= MAX_SWAP_DOCUMENTS:
            for i, first in enumerate(movable):
                for second in movable[i + 1 :]:
                    a, b = assigned[first], assigned[second]
                    (source_1, tokens_1), (source_2, tokens_2) = doc_tokens[first], doc_tokens[second]
                    if a == b or (source_1 != source_2 and (count[(source_1, a)] == 1 or count[(source_2, b)] == 1)):
                        continue
                    deviation = worst({a: tokens_2 - tokens_1, b: tokens_1 - tokens_2})
                    if deviation < best - 1e-12 and (improved is None or deviation < improved[0]):
                        improved = (deviation, {first: b, second: a})
        if improved is None:
            break
        best, change = improved
        for doc, split in change.items():
            source, tokens = doc_tokens[doc]
            totals[assigned[doc]] -= tokens
            count[(source, assigned[doc])] -= 1
            totals[split] += tokens
            count[(source, split)] += 1
            assigned[doc] = split
    return assigned


def make_splits(chunks: list[Chunk], previous: dict[str, str], config: SplitConfig) -> SplitResult:
    """Assign documents and route their chunks; drop exact cross-split duplicates from the later split."""
    doc_tokens: dict[str, tuple[str, int]] = {}
    for chunk in chunks:
        source, tokens = doc_tokens.get(chunk.doc_id, (chunk.source, 0))
        doc_tokens[chunk.doc_id] = (source, tokens + chunk.n_tokens)
    assignment = assign_documents(doc_tokens, previous, config)

    rows: dict[str, list[Chunk]] = {name: [] for name in SPLITS}
    for chunk in sorted(chunks, key=lambda c: (c.doc_id, c.chunk_index)):
        rows[assignment[chunk.doc_id]].append(chunk)
    seen: set[str] = set()
    dropped = 0
    for name in SPLITS:
        kept = []
        for chunk in rows[name]:
            if chunk.chunk_id in seen and name != "train":
                dropped += 1
                continue
            kept.append(chunk)
        seen.update(c.chunk_id for c in kept)
        rows[name] = kept

    total_tokens = sum(c.n_tokens for part in rows.values() for c in part) or 1
    total_chunks = sum(len(part) for part in rows.values()) or 1
    return SplitResult(
        assignments=[
            Assignment(doc_id=doc, source=doc_tokens[doc][0], split=assignment[doc], doc_tokens=doc_tokens[doc][1])
            for doc in sorted(doc_tokens)
        ],
        rows=rows,
        new_documents=sum(1 for doc in doc_tokens if doc not in previous),
        kept_documents=sum(1 for doc in doc_tokens if doc in previous),
        cross_split_duplicates=dropped,
        token_share={name: sum(c.n_tokens for c in rows[name]) / total_tokens for name in SPLITS},
        chunk_share={name: len(rows[name]) / total_chunks for name in SPLITS},
    )


def leaked_documents(rows: dict[str, list[Chunk]]) -> dict[str, list[str]]:
    """Documents that appear in more than one split: doc_id -> splits. Empty when the splits are leak-free."""
    where: dict[str, set[str]] = defaultdict(set)
    for name, chunks in rows.items():
        for chunk in chunks:
            where[chunk.doc_id].add(name)
    return {doc: sorted(names) for doc, names in where.items() if len(names) > 1}


def ratio_deviation(token_share: dict[str, float], config: SplitConfig) -> dict[str, float]:
    """Absolute deviation of each split's token share from its configured ratio."""
    return {name: abs(token_share.get(name, 0.0) - getattr(config, name)) for name in SPLITS}


def leakage_check(rows: dict[str, list[Chunk]]) -> tuple[bool, str, dict]:
    """Check outcome: no document in two splits."""
    leaked = leaked_documents(rows)
    if leaked:
        return False, f"{len(leaked)} document(s) appear in more than one split", leaked
    return True, "no document appears in two splits", {}


def ratio_check(token_share: dict[str, float], config: SplitConfig, documents: int) -> tuple[bool, str, dict]:
    """Check outcome: every split's token share within `config.tolerance` of its ratio.

    Whole documents move between splits, so a corpus of very few documents cannot hit the ratios; below
    MIN_DOCUMENTS_FOR_RATIOS the outcome passes and says so instead of raising a false alarm.
    """
    deviation = ratio_deviation(token_share, config)
    worst = max(deviation, key=lambda name: deviation[name])
    details = {
        name: {"share": round(token_share.get(name, 0.0), 4), "target": getattr(config, name)} for name in SPLITS
    }
    if deviation[worst] <= config.tolerance:
        return True, f"all splits within {config.tolerance:.0%} of their ratios", details
    if documents < MIN_DOCUMENTS_FOR_RATIOS:
        return True, f"{worst} is {deviation[worst]:.1%} off, but {documents} documents cannot be split finer", details
    return False, f"{worst} share {token_share.get(worst, 0):.3f} is {deviation[worst]:.1%} off its ratio", details


MIN_DOCUMENTS_FOR_RATIOS = 10
