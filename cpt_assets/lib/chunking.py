"""Sentence-aware chunks of cleaned document text, sized in the base model's tokens.

Chunks are the unit the corpus is filtered, deduplicated, split and inspected in, so a chunk should be readable on
its own: whole sentences, never two documents, about `target_tokens` tokens of the tokenizer the model trains with.

Sentences come from NLTK's Punkt, trained on the corpus itself (punkt's pretrained data cannot be downloaded here,
and a model trained on news misses "Sec.", "Fig.", "U.S.C." and appendix numbers such as "A.4.1") and seeded with
abbreviations common in standards. The learned parameters are saved as JSON so a run can reuse them.

Token counts are exact and cost about one tokenizer pass: every sentence is encoded together with the whitespace
before it, and a byte-level BPE tokenizer's pre-tokenizer always starts a new piece at whitespace that follows
non-whitespace, so a chunk's count is the count of its first sentence alone plus the counts of the others with
their leading whitespace. The first sentences are encoded alone in a second, small batch, and a sample of chunks is
re-encoded whole to check the identity (all chunks are re-encoded if a tokenizer breaks it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpt_assets.lib.cleaning import CleanedDocument, CleaningConfig, QualityConfig, clean_document, quality_filter
from cpt_assets.lib.dedup import DedupConfig, NearDuplicateIndex, drop_exact_duplicates, mark_near_duplicates
from cpt_assets.lib.lake import atomic_path
from cpt_assets.lib.text_quality import score_text
from cpt_assets.lib.types import Chunk, DroppedChunk, Page

if TYPE_CHECKING:  # nltk is imported where a splitter is made: its package pulls in scipy.stats and sklearn (1.4 s),
    # which every Dagster process that loads the definitions (code servers, run and step workers) would pay
    from nltk.tokenize.punkt import PunktSentenceTokenizer

log = logging.getLogger(__name__)

CHUNKER_VERSION = "3"  # bump when cleaning or chunking rules change, so incremental refresh redoes every document

# Abbreviations of standards and government text that Punkt may see too rarely to learn (lowercase, no final
# period, as Punkt stores them). Words that often end sentences ("app", "art", "spec", "max") are left out.
STANDARDS_ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "e.g", "i.e", "etc", "cf", "viz", "vs", "al", "approx", "resp", "incl", "esp", "a.k.a", "n.b", "ca",
        "fig", "figs", "sec", "secs", "sect", "no", "nos", "nr", "vol", "vols", "pp", "ch", "chap", "para",
        "eq", "eqs", "ref", "refs", "rev", "ed", "eds", "std", "stds", "pub", "publ", "natl", "inst", "technol",
        "dept", "govt", "fed", "reg", "u.s", "u.s.c", "u.k", "p.l", "c.f.r", "e.o", "inc", "corp", "ltd", "co",
        "jr", "sr", "dr", "mr", "mrs", "ms", "prof", "st", "op", "cit", "ibid",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """Everything that decides the clean_chunks output; its hash keys incremental refresh."""

    target_tokens: int = 512  # whole sentences are packed into a chunk up to this many base-model tokens
    min_tokens: int = 32  # a shorter chunk absorbs the next sentences (up to max_tokens) or is dropped (too_short)
    max_tokens: int = 1024  # hard cap: a longer sentence is cut at line breaks, then at token boundaries
    splitter_max_chars: int = 1_000_000  # Punkt trains on at most this many characters (about 4 CPU-s per MB)
    verify_sample: int = 8  # chunks re-encoded whole per call to check the token-count identity
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)  # page furniture, TOC, boilerplate, re-flow
    quality: QualityConfig | None = field(default_factory=QualityConfig)  # Gopher-style chunk filter; None: off
    dedup: DedupConfig = field(default_factory=DedupConfig)  # near-duplicate reporting threshold and MinHash size
    ocr_noise_garbage: float = 0.25  # a chunk of a document with OCR'd pages scoring at least this garbage
    # (text_quality.score_text) is dropped as "ocr_noise"
    workers: int = 0  # processes that clean documents in parallel; 0: os.cpu_count()
    parallel_min_chars: int = 2_000_000  # below this much page text, clean in this process (a spawn costs ~1 s)

    def __post_init__(self) -> None:
        if self.target_tokens <= 0:
            raise ValueError(f"ChunkingConfig.target_tokens must be > 0, got {self.target_tokens}")
        if not 0 <= self.min_tokens <= self.target_tokens:
            raise ValueError(
                f"ChunkingConfig.min_tokens must be in [0, target_tokens={self.target_tokens}], got {self.min_tokens}"
            )
        if self.max_tokens < self.target_tokens:
            raise ValueError(
                f"ChunkingConfig.max_tokens must be >= target_tokens={self.target_tokens}, got {self.max_tokens}"
            )
        if self.splitter_max_chars <= 0:
            raise ValueError(f"ChunkingConfig.splitter_max_chars must be > 0, got {self.splitter_max_chars}")
        if self.verify_sample < 0:
            raise ValueError(f"ChunkingConfig.verify_sample must be >= 0, got {self.verify_sample}")

    def config_hash(self) -> str:
        """sha256 of the settings and CHUNKER_VERSION: equal hash, equal chunks from equal pages."""
        settings = asdict(self)
        for name in ("workers", "parallel_min_chars"):  # how fast, not what: equal chunks either way
            settings.pop(name)
        payload = json.dumps({"version": CHUNKER_VERSION, **settings}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---- sentence splitter ------------------------------------------------------------------------------------------


def train_sentence_splitter(
    texts: Iterable[str],
    max_chars: int = 2_000_000,
    extra_abbreviations: Iterable[str] = STANDARDS_ABBREVIATIONS,
) -> PunktSentenceTokenizer:
    """Train Punkt on cleaned corpus text and add known abbreviations.

    Args:
        texts: Cleaned document texts. Each contributes an equal share of `max_chars` (its beginning), so one long
            document does not decide the abbreviations alone.
        max_chars: Training budget in characters; Punkt's trainer is pure Python.
        extra_abbreviations: Lowercase abbreviations without the final period ("e.g", "sec", "u.s.c").

    Returns:
        A sentence tokenizer with the learned parameters.
    """
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer

    texts = [t for t in texts if t.strip()]
    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True  # pyright: ignore[reportAttributeAccessIssue] # learn "No. 5"-style collocations, not only those after abbreviations
    if texts:
        share = max(1, max_chars // len(texts))
        sample = "\n\n".join(text[:share] for text in texts)
        trainer.train(sample, finalize=False)
    trainer.finalize_training()
    params = trainer.get_params()
    params.abbrev_types.update(a.lower().rstrip(".") for a in extra_abbreviations)
    return PunktSentenceTokenizer(params)


def splitter_to_dict(splitter: PunktSentenceTokenizer) -> dict[str, Any]:
    """The learned Punkt parameters as JSON-ready, sorted data."""
    params = splitter._params
    return {
        "abbrev_types": sorted(params.abbrev_types),
        "collocations": sorted([list(pair) for pair in params.collocations]),
        "sent_starters": sorted(params.sent_starters),
        "ortho_context": dict(sorted(params.ortho_context.items())),
    }


def splitter_from_dict(data: Mapping[str, Any]) -> PunktSentenceTokenizer:
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(data["abbrev_types"])
    params.collocations = {tuple(pair) for pair in data["collocations"]}
    params.sent_starters = set(data["sent_starters"])
    for word, flags in data["ortho_context"].items():
        params.ortho_context[word] = int(flags)
    return PunktSentenceTokenizer(params)


def splitter_hash(splitter: PunktSentenceTokenizer) -> str:
    return hashlib.sha256(json.dumps(splitter_to_dict(splitter), sort_keys=True).encode("utf-8")).hexdigest()


def save_splitter(splitter: PunktSentenceTokenizer, path: Path | str) -> Path:
    """Write the Punkt parameters as JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splitter_to_dict(splitter), indent=1, sort_keys=True), encoding="utf-8")
    return path


def load_splitter(path: Path | str) -> PunktSentenceTokenizer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No saved sentence splitter at {path}")
    try:
        return splitter_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a saved Punkt splitter: {error}") from error


_SECTION_NUMBER_RE = re.compile(
    r"^(?:\d{1,2}(?:\.\d{1,2})*\.?|[A-Z]\.(?:\d{1,2}\.?)*|appendix [A-Z]\.?)$", re.IGNORECASE
)
_BLANK_LINES_RE = re.compile(r"\n[ \t]*\n\s*")


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of blank-line separated paragraphs, without surrounding whitespace."""
    spans = []
    start = 0
    for separator in [*_BLANK_LINES_RE.finditer(text), None]:
        end = separator.start() if separator else len(text)
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + lead + len(stripped)))
        if separator:
            start = separator.end()
    return spans


_LIST_ITEM_RE = re.compile(r"^(?:[\u2022\u2013\u2014*\-o\u2713]\s|\(?\d{1,2}[.)]\s|\(?[a-z][.)]\s|\([ivx]{1,5}\)\s)")


def is_block(paragraph: str) -> bool:
    """Whether a cleaned paragraph is a preformatted block (code, ABNF/ASN.1, table rows) rather than prose.

    The cleaner re-flows prose into one line per paragraph and keeps line breaks only in preformatted blocks and
    between list items, so a paragraph with a line break whose lines are not all list items is a block.
    """
    if "\n" not in paragraph:
        return False
    return not all(_LIST_ITEM_RE.match(line.lstrip()) for line in paragraph.split("\n")[1:])


def sentence_spans(text: str, splitter: PunktSentenceTokenizer) -> list[tuple[int, int]]:
    """Character spans of sentences; paragraphs (blank-line separated) always end a sentence.

    Spans start and end on non-whitespace characters.
    """
    spans = []
    for base, end in paragraph_spans(text):
        paragraph = text[base:end]
        if is_block(paragraph):
            spans.append((base, end))  # code, ABNF, a table: one unit, cut only when longer than max_tokens
            continue
        merge_next = False
        for start, stop in splitter.span_tokenize(paragraph):
            piece = paragraph[start:stop]
            stripped = piece.strip()
            if not stripped:
                continue
            lead = len(piece) - len(piece.lstrip())
            span = (base + start + lead, base + start + lead + len(stripped))
            if merge_next:
                span = (spans.pop()[0], span[1])
            spans.append(span)
            # Punkt ends a sentence after "4.1.3." in "4.1.3. Server Hello": keep a heading's number with its title.
            merge_next = bool(_SECTION_NUMBER_RE.match(stripped))
    return spans


def split_sentences(text: str, splitter: PunktSentenceTokenizer) -> list[str]:
    return [text[start:end] for start, end in sentence_spans(text, splitter)]


# ---- token counting ---------------------------------------------------------------------------------------------


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts of many texts in one batch, without special tokens.

    Uses the fast tokenizer's Rust batch encoder when there is one (no Python lists of ids are built).
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(encoding) for encoding in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    encoded = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [len(ids) for ids in encoded]


def _token_cuts(tokenizer: Any, text: str, size: int) -> list[int]:
    """Character offsets that cut `text` into pieces of at most `size` tokens, preferring cuts at whitespace."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    cuts = []
    index = size
    while index < len(starts):
        cut = index
        for back in range(index, max(index - 64, 0), -1):  # move back to a token at whitespace
            start = starts[back]
            if text[start].isspace() or (start > 0 and text[start - 1].isspace()):
                cut = back
                break
        cuts.append(starts[cut])
        index = cut + size
    return cuts


# ---- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentChunkStats:
    """Per-document outcome, for the asset's metadata table."""

    doc_id: str
    pages_in: int
    pages_kept: int
    chars_in: int
    chars_clean: int
    chunks: int
    dropped: int
    tokens: int


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What `chunk_documents` produced and what it removed, with counts an asset can put in metadata."""

    chunks: list[Chunk]
    dropped: list[DroppedChunk]
    documents: list[DocumentChunkStats]
    dropped_counts: dict[str, int]  # chunk drop reason -> chunks ("empty", "too_short", "duplicate", quality reasons)
    dropped_pages: dict[str, int]  # page drop reason -> pages ("toc", "boilerplate", "empty")
    removed_lines: dict[str, int]  # line removal reason -> lines ("header_footer", "page_number", ...)
    edits: dict[str, int]  # in-line edits ("dehyphenated", "dotted_leader", "special_token", ...)
    near_duplicates: int  # kept chunks with near_duplicate_of set
    tokens: int  # tokens in kept chunks
    chars_in: int  # page text characters read
    chars_out: int  # characters in kept chunks
    timings: dict[str, float]  # seconds per phase: clean, train_splitter, split, tokenize, filter
    seconds: float  # wall time of the whole call
    splitter: PunktSentenceTokenizer | None = None  # the splitter used (trained here when none was given)
    token_counts_verified: bool = True  # False when the additive count failed its check and chunks were re-encoded
    workers: int = 1  # processes that cleaned the documents

    @property
    def mb_per_s_per_core(self) -> float:
        """Throughput per worker process (cleaning runs on `workers` cores; the rest of the call on one)."""
        return self.mb_per_s / self.workers if self.workers else 0.0

    @property
    def mb_per_s(self) -> float:
        """Page-text megabytes (10^6 characters) cleaned and chunked per second."""
        return self.chars_in / 1e6 / self.seconds if self.seconds > 0 else 0.0


def group_pages(pages: Iterable[Page]) -> dict[str, list[Page]]:
    """Pages grouped by document, each document's pages in page order; documents in doc_id order."""
    grouped: dict[str, list[Page]] = {}
    for page in pages:
        grouped.setdefault(page.doc_id, []).append(page)
    return {doc_id: sorted(grouped[doc_id], key=lambda p: p.page_number) for doc_id in sorted(grouped)}


def _add(counter: dict[str, int], other: Mapping[str, int]) -> None:
    for key, value in other.items():
        counter[key] = counter.get(key, 0) + value


@dataclass(slots=True)
class _Doc:
    doc_id: str
    source: str
    doc_sha256: str
    pages_in: int
    pages_kept: int
    chars_in: int
    text: str
    ocr: bool = False  # some of its pages were OCR'd
    spans: list[tuple[int, int]] = field(default_factory=list)  # units: sentences or pieces of long ones
    counts: list[int] = field(default_factory=list)  # tokens of each unit with the whitespace before it


def chunk_documents(
    pages_by_doc: Mapping[str, Sequence[Page]],
    tokenizer: Any,
    splitter: PunktSentenceTokenizer | None = None,
    config: ChunkingConfig | None = None,
    seen: dict[str, str] | None = None,
    near_index: NearDuplicateIndex | None = None,
) -> ChunkResult:
    """Clean, sentence-split, chunk, filter and deduplicate the documents of one source.

    Args:
        pages_by_doc: doc_id -> its pages (any order; sorted by page number here). Chunks never cross documents.
        tokenizer: The base model's Hugging Face tokenizer (fast tokenizers are much quicker).
        splitter: A trained Punkt tokenizer; when None one is trained on this call's cleaned text and returned in
            the result so the caller can save it.
        config: Chunk sizes, cleaning, quality and dedup settings.
        seen: Fingerprints (`dedup.text_fingerprint`) -> chunk_id of chunks kept earlier, e.g. those of unchanged
            documents in an incremental refresh; exact copies of them are dropped as duplicates. Updated in place.
        near_index: A near-duplicate index holding earlier chunks (see `dedup.mark_near_duplicates`); a new one
            from `config.dedup` when None.

    Returns:
        Kept chunks (document order, then chunk index), dropped chunks with reasons, and counts and timings.
    """
    config = config or ChunkingConfig()
    wall = time.perf_counter()
    timings: dict[str, float] = {}
    removed_lines: dict[str, int] = {}
    dropped_pages: dict[str, int] = {}
    edits: dict[str, int] = {}

    tick = time.perf_counter()
    docs: list[_Doc] = []
    ordered = [(doc_id, sorted(pages_by_doc[doc_id], key=lambda p: p.page_number)) for doc_id in sorted(pages_by_doc)]
    ordered = [(doc_id, pages) for doc_id, pages in ordered if pages]
    total_chars = sum(p.chars for _, pages in ordered for p in pages)
    workers = effective_workers(config.workers, len(ordered)) if total_chars >= config.parallel_min_chars else 1
    cleaned_docs = _clean_all([[p.text for p in pages] for _, pages in ordered], config.cleaning, workers)
    for (doc_id, pages), cleaned in zip(ordered, cleaned_docs, strict=True):
        _add(removed_lines, cleaned.removed_lines)
        _add(dropped_pages, cleaned.dropped_pages)
        _add(edits, cleaned.edits)
        first = pages[0]
        docs.append(
            _Doc(
                doc_id,
                first.source,
                first.doc_sha256,
                len(pages),
                cleaned.pages_kept,
                cleaned.chars_in,
                cleaned.text,
                ocr=any(p.method == "ocr" for p in pages),
            )  # fmt: skip
        )
    timings["clean"] = time.perf_counter() - tick

    if splitter is None:
        tick = time.perf_counter()
        splitter = train_sentence_splitter((d.text for d in docs), max_chars=config.splitter_max_chars)
        timings["train_splitter"] = time.perf_counter() - tick

    tick = time.perf_counter()
    for doc in docs:
        doc.spans = sentence_spans(doc.text, splitter)
    timings["split"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _count_units(docs, tokenizer, config)
    packed = [_pack(doc, config) for doc in docs]
    chunk_texts, chunk_counts, verified = _exact_counts(docs, packed, tokenizer, config)
    timings["tokenize"] = time.perf_counter() - tick

    tick = time.perf_counter()
    candidates: list[Chunk] = []
    dropped: list[DroppedChunk] = []
    per_doc_dropped: dict[str, int] = {}
    for doc, texts, counts in zip(docs, chunk_texts, chunk_counts, strict=True):
        if not texts:
            dropped.append(_dropped(doc, 0, "", "empty"))
            per_doc_dropped[doc.doc_id] = 1
            continue
        for index, (text, n_tokens) in enumerate(zip(texts, counts, strict=True)):
            chunk = Chunk(
                chunk_id=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                doc_id=doc.doc_id,
                source=doc.source,
                doc_sha256=doc.doc_sha256,
                chunk_index=index,
                text=text,
                n_tokens=n_tokens,
                n_chars=len(text),
            )
            reason = _drop_reason(chunk, config, doc.ocr)
            if reason:
                dropped.append(_dropped(doc, index, text, reason, chunk.chunk_id))
                per_doc_dropped[doc.doc_id] = per_doc_dropped.get(doc.doc_id, 0) + 1
            else:
                candidates.append(chunk)
    kept, duplicates = drop_exact_duplicates(candidates, seen)
    for duplicate in duplicates:
        per_doc_dropped[duplicate.doc_id] = per_doc_dropped.get(duplicate.doc_id, 0) + 1
    dropped.extend(duplicates)
    kept, near = mark_near_duplicates(kept, config.dedup, near_index)
    timings["filter"] = time.perf_counter() - tick

    dropped.sort(key=lambda d: (d.doc_id, d.chunk_index))
    dropped_counts: dict[str, int] = {}
    for item in dropped:
        dropped_counts[item.reason] = dropped_counts.get(item.reason, 0) + 1
    tokens_by_doc: dict[str, int] = {}
    chunks_by_doc: dict[str, int] = {}
    for chunk in kept:
        tokens_by_doc[chunk.doc_id] = tokens_by_doc.get(chunk.doc_id, 0) + chunk.n_tokens
        chunks_by_doc[chunk.doc_id] = chunks_by_doc.get(chunk.doc_id, 0) + 1
    documents = [
        DocumentChunkStats(
            doc_id=d.doc_id,
            pages_in=d.pages_in,
            pages_kept=d.pages_kept,
            chars_in=d.chars_in,
            chars_clean=len(d.text),
            chunks=chunks_by_doc.get(d.doc_id, 0),
            dropped=per_doc_dropped.get(d.doc_id, 0),
            tokens=tokens_by_doc.get(d.doc_id, 0),
        )
        for d in docs
    ]
    return ChunkResult(
        chunks=kept,
        dropped=dropped,
        documents=documents,
        dropped_counts=dropped_counts,
        dropped_pages=dropped_pages,
        removed_lines=removed_lines,
        edits=edits,
        near_duplicates=near,
        tokens=sum(c.n_tokens for c in kept),
        chars_in=sum(d.chars_in for d in docs),
        chars_out=sum(c.n_chars for c in kept),
        timings={k: round(v, 4) for k, v in timings.items()},
        workers=workers,
        seconds=time.perf_counter() - wall,
        splitter=splitter,
        token_counts_verified=verified,
    )


def effective_workers(configured: int, documents: int) -> int:
    """Worker processes for cleaning: the configured number (0: all cores), never more than the documents."""
    wanted = configured if configured > 0 else (os.cpu_count() or 1)
    return max(1, min(wanted, documents))


def _clean_all(page_texts: list[list[str]], config: CleaningConfig, workers: int) -> list[CleanedDocument]:
    """Clean documents, in `workers` processes when there is more than one (cleaning is pure Python, per document)."""
    if workers <= 1:
        return [clean_document(texts, config) for texts in page_texts]
    # Largest documents first, so one long document does not start last and finish alone.
    order = sorted(range(len(page_texts)), key=lambda i: -sum(map(len, page_texts[i])))
    results: list[CleanedDocument | None] = [None] * len(page_texts)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(clean_document, page_texts[i], config): i for i in order}
        for future, i in futures.items():
            results[i] = future.result()
    return results  # type: ignore[return-value]


def _dropped(doc: _Doc, index: int, text: str, reason: str, chunk_id: str | None = None) -> DroppedChunk:
    return DroppedChunk(
        chunk_id=chunk_id or hashlib.sha256(text.encode("utf-8")).hexdigest(),
        doc_id=doc.doc_id,
        source=doc.source,
        chunk_index=index,
        text=text,
        reason=reason,
    )


def _drop_reason(chunk: Chunk, config: ChunkingConfig, ocr: bool = False) -> str:
    if not chunk.text.strip():
        return "empty"
    if ocr and score_text(chunk.text).garbage >= config.ocr_noise_garbage:
        return "ocr_noise"
    if chunk.n_tokens < config.min_tokens:
        return "too_short"
    if config.quality is not None:
        keep, reason = quality_filter(chunk.text, config.quality)
        if not keep:
            return reason
    return ""


def _count_units(docs: list[_Doc], tokenizer: Any, config: ChunkingConfig) -> None:
    """Token counts of every unit with its leading whitespace; units over max_tokens are cut first."""
    texts = [_unit_text(doc, i) for doc in docs for i in range(len(doc.spans))]
    counts = iter(count_tokens(tokenizer, texts))
    for doc in docs:
        doc.counts = [next(counts) for _ in doc.spans]
    for doc in docs:
        if any(count > config.max_tokens for count in doc.counts):
            _cut_long_units(doc, tokenizer, config)


def _unit_text(doc: _Doc, i: int) -> str:
    start = doc.spans[i - 1][1] if i else doc.spans[i][0]
    return doc.text[start : doc.spans[i][1]]


def _cut_long_units(doc: _Doc, tokenizer: Any, config: ChunkingConfig) -> None:
    """Replace units longer than max_tokens by pieces: first at line breaks, then at token boundaries."""
    spans: list[tuple[int, int]] = []
    for (start, end), count in zip(doc.spans, doc.counts, strict=True):
        if count <= config.max_tokens:
            spans.append((start, end))
            continue
        # Lines of a table or code block, grouped up to target_tokens; a line still too long is cut by tokens.
        lines = [(m.start() + start, m.end() + start) for m in re.finditer(r"[^\n]*\S", doc.text[start:end])]
        lines = [(s + len(doc.text[s:e]) - len(doc.text[s:e].lstrip()), e) for s, e in lines]
        # Each line counted with the newline and indentation before it, as it sits inside a group.
        line_counts = count_tokens(
            tokenizer, [doc.text[(lines[k - 1][1] if k else s) : e] for k, (s, e) in enumerate(lines)]
        )
        group_start, group_tokens, group_end = None, 0, 0
        for (s, e), n in zip(lines, line_counts, strict=True):
            if group_start is not None and group_tokens + n > config.target_tokens:
                spans.append((group_start, group_end))
                group_start, group_tokens = None, 0
            if n > config.max_tokens:
                piece_start = s
                for cut in _token_cuts(tokenizer, doc.text[s:e], config.target_tokens):
                    piece_end = s + len(doc.text[s : s + cut].rstrip())
                    if piece_end > piece_start:
                        spans.append((piece_start, piece_end))
                    piece_start = s + cut + (len(doc.text[s + cut : e]) - len(doc.text[s + cut : e].lstrip()))
                spans.append((piece_start, e))
                continue
            if group_start is None:
                group_start = s
            group_tokens += n
            group_end = e
        if group_start is not None:
            spans.append((group_start, group_end))
    doc.spans = spans
    doc.counts = count_tokens(tokenizer, [_unit_text(doc, i) for i in range(len(spans))])


def _pack(doc: _Doc, config: ChunkingConfig) -> list[tuple[int, int]]:
    """Greedy packing of units into chunks: (first unit, last unit + 1) per chunk.

    A chunk closes when the next unit would pass target_tokens, unless it is still under min_tokens, in which case
    it may grow to max_tokens. A last chunk under min_tokens joins the previous one when the two fit in max_tokens.
    """
    groups: list[tuple[int, int]] = []
    sizes: list[int] = []
    start, size = 0, 0
    for i, count in enumerate(doc.counts):
        if i > start and (
            size + count > config.max_tokens or (size + count > config.target_tokens and size >= config.min_tokens)
        ):
            groups.append((start, i))
            sizes.append(size)
            start, size = i, 0
        size += count
    if doc.counts:
        if groups and size < config.min_tokens and sizes[-1] + size <= config.max_tokens:
            groups[-1] = (groups[-1][0], len(doc.counts))
        else:
            groups.append((start, len(doc.counts)))
    return groups


def _exact_counts(
    docs: list[_Doc], packed: list[list[tuple[int, int]]], tokenizer: Any, config: ChunkingConfig
) -> tuple[list[list[str]], list[list[int]], bool]:
    """Chunk texts and exact token counts (first unit alone + the rest with their whitespace); verified on a sample."""
    firsts = [
        doc.text[doc.spans[a][0] : doc.spans[a][1]] for doc, groups in zip(docs, packed, strict=True) for a, _ in groups
    ]
    first_counts = iter(count_tokens(tokenizer, firsts))
    texts: list[list[str]] = []
    counts: list[list[int]] = []
    for doc, groups in zip(docs, packed, strict=True):
        doc_texts, doc_counts = [], []
        for a, b in groups:
            doc_texts.append(doc.text[doc.spans[a][0] : doc.spans[b - 1][1]])
            doc_counts.append(next(first_counts) + sum(doc.counts[a + 1 : b]))
        texts.append(doc_texts)
        counts.append(doc_counts)
    flat = [(i, j) for i, doc_texts in enumerate(texts) for j in range(len(doc_texts))]
    if not flat or config.verify_sample == 0:
        return texts, counts, True
    step = max(1, len(flat) // config.verify_sample)
    sample = flat[::step][: config.verify_sample]
    actual = count_tokens(tokenizer, [texts[i][j] for i, j in sample])
    if all(counts[i][j] == n for (i, j), n in zip(sample, actual, strict=True)):
        return texts, counts, True
    log.warning("Additive token counts differ from whole-chunk encoding for this tokenizer; re-encoding all chunks")
    exact = iter(count_tokens(tokenizer, [t for doc_texts in texts for t in doc_texts]))
    return texts, [[next(exact) for _ in doc_texts] for doc_texts in texts], False
