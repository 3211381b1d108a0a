"""Base model vs adapted model on the test split: loss, perplexity, continuation quality and weight change.

The base model is loaded once and the LoRA adapter is put on top with peft; `disable_adapter()` turns the adapter
off for the base numbers, then (in float32) the adapter is merged into the weights for the adapted numbers, so both
models are scored from one copy of the weights on identical inputs (the test suite checks that the base numbers
equal those of the base model loaded alone, and the adapted ones those of the merged model `merge.py` writes).

- Loss and perplexity are token-weighted over packed blocks built by the scoring core (`scoring.document_stream`:
  each document followed by the training separator; `scoring.pack`: cut into `block_size` tokens, the tail kept),
  with `block_size` defaulting to training's, so it is the shape the model was trained on; each source is packed
  on its own so every block belongs to one source and the per-source rows are exact. The adapted model's blocks and
  per-token losses are returned as `ScoredBlocks` and written to the lake, so GGUF verification compares llama.cpp
  with this very figure instead of computing a second "HF perplexity".
- Continuations: the opening of each sampled test chunk is the prompt; greedy decoding writes as many tokens as the
  true continuation that follows it (bounded by `max_new_tokens`), scored with BLEU, ROUGE and MiniLM similarity
  (see `metrics.py`).
Weight change is not measured here: it is defined once, by the real merge (`merge.weight_changes`).

`write_report` turns an `EvalReport` into report.json, report.md and model_comparison.png; `rich_table` renders
the same figures for the run log; `perplexity_improved` is the asset check's pure logic.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpt_assets.lib.lake import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    EVAL_CHART,
    EVAL_CONTROL_BLOCKS,
    EVAL_REPORT_JSON,
    EVAL_REPORT_MD,
    EVAL_SCORES,
    atomic_path,
    sha256_file,
    write_scored_blocks,
    write_token_blocks,
)
from cpt_assets.lib.metrics import TextScores, score_texts
from cpt_assets.lib.scoring import (
    DOCUMENT_CHUNK_SEPARATOR,
    block_nll,
    document_separator_id,
    document_stream,
    greedy_decode,
    pack,
    perplexity,
    text_blocks,
    tokenize_texts,
)
from cpt_assets.lib.types import Chunk, ScoredBlocks

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
MIN_SAMPLE_TOKENS = 16  # a chunk shorter than this has no meaningful opening/continuation split


@dataclass
class EvalConfig:
    """How the evaluation samples, bounds and runs."""

    max_samples: int = 20  # test chunks whose continuation is scored (seed: 10; 20 costs ~1 CPU-minute more; 0: none)
    prompt_tokens: int = 64  # opening tokens given as prompt (at most half of a chunk)
    max_new_tokens: int = 64  # generated tokens per sample; the reference is the same span of the true text
    block_size: int = 256  # tokens per packed block for loss and perplexity (training's default block size)
    max_eval_blocks: int = 0  # packed blocks scored per model (0: the whole test split); a bound spreads them over
    # sources, each source getting >= 1
    max_control_blocks: int = 32  # packed blocks of general text (control_text's held-out part) scored per model:
    # the forgetting control (0: all)
    batch_size: int = 4  # packed blocks per forward pass (logits take batch x block_size x vocab floats)
    generation_batch_size: int = 16  # prompts decoded together; decoding is memory-bound, so larger batches are ~free
    seed: int = 0  # picks the sampled chunks and the scored blocks
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    dtype: str = "float32"  # weights and activations while evaluating
    num_threads: int = 0  # torch CPU threads while evaluating (0: leave torch's setting), restored afterwards

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_eval_blocks", "max_control_blocks", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"EvalConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("prompt_tokens", "max_new_tokens", "batch_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.block_size < 2:
            raise ValueError(
                f"EvalConfig.block_size must be >= 2 (one token of context, one to predict), got {self.block_size}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"EvalConfig.device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"EvalConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")


# ---- records -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelScores:
    """Every figure for one model (base or adapted)."""

    loss: float  # token-weighted mean cross-entropy (nats) over the scored blocks
    perplexity: float  # exp(loss)
    bleu: float = math.nan  # corpus BLEU of the continuations, 0-100
    sentence_bleu: float = math.nan  # mean sentence BLEU, 0-100
    rouge1: float = math.nan  # mean ROUGE-1 F-measure, 0-1
    rouge2: float = math.nan  # mean ROUGE-2 F-measure, 0-1
    rougeL: float = math.nan  # noqa: N815 - mean ROUGE-L F-measure, 0-1
    embedding_similarity: float = math.nan  # mean MiniLM cosine similarity, -1..1
    loss_seconds: float = 0.0  # time of the loss pass
    generation_seconds: float = 0.0  # time of greedy generation
    generated_tokens: int = 0  # tokens generated over all samples (up to EOS)


@dataclass(frozen=True, slots=True)
class SourcePerplexity:
    """Loss and perplexity of both models on one document source."""

    source: str
    documents: int
    blocks: int  # packed blocks scored
    tokens: int  # predicted tokens scored
    base_loss: float
    base_perplexity: float
    adapted_loss: float
    adapted_perplexity: float

    @property
    def change_pct(self) -> float:
        return relative_change(self.base_perplexity, self.adapted_perplexity)


@dataclass(frozen=True, slots=True)
class ContinuationSample:
    """One prompt, its true continuation and what each model wrote."""

    chunk_id: str
    doc_id: str
    source: str
    prompt: str
    reference: str
    base_text: str
    adapted_text: str
    prompt_tokens: int
    reference_tokens: int
    base: TextScores
    adapted: TextScores


@dataclass(frozen=True, slots=True)
class ControlScores:
    """Both models on general text (the forgetting control): the same blocks, token-weighted."""

    blocks: tuple[tuple[int, ...], ...]  # the scored blocks (the promotion gate scores the promoted version on them)
    tokens: int  # predicted tokens per model
    base_perplexity: float
    adapted_perplexity: float

    @property
    def change_pct(self) -> float:
        """Adapted vs base general-text perplexity, % of base (positive: the model forgot)."""
        return relative_change(self.base_perplexity, self.adapted_perplexity)


@dataclass(frozen=True, slots=True)
class EvalReport:
    """Everything `evaluate_models` measured; `to_dict()` gives it as JSON-ready data."""

    base: ModelScores
    adapted: ModelScores
    per_source: list[SourcePerplexity] = field(default_factory=list)
    samples: list[ContinuationSample] = field(default_factory=list)
    scored: ScoredBlocks | None = None  # the adapted model's blocks and per-token NLL (written as scores.json)
    control: ControlScores | None = None  # general-text perplexity of both models; None without a control set
    test_rows: int = 0
    test_documents: int = 0
    eval_tokens: int = 0  # predicted tokens in the loss pass (per model)
    eval_blocks: int = 0  # packed blocks scored (per model)
    available_blocks: int = 0  # packed blocks the test split makes before the bound
    device: str = "cpu"
    base_model_dir: str = ""
    adapter_dir: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase and in total

    def to_dict(self) -> dict[str, Any]:
        """Every figure as plain JSON data (NaN and infinities become null)."""
        data = asdict(self)
        data.pop("scored")  # its own file (scores.json): thousands of token ids do not belong in the report
        if self.control is not None:
            data["control"].pop("blocks")  # its own file too (control_blocks.json)
            data["control"]["change_pct"] = self.control.change_pct
        for row, record in zip(data["per_source"], self.per_source, strict=True):
            row["change_pct"] = record.change_pct
        data["metrics"] = [
            asdict(row) | {"change": row.change, "change_pct": row.change_pct} for row in metric_rows(self)
        ]
        return _json_safe(data)


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One line of the comparison table."""

    name: str
    base: float
    adapted: float
    lower_is_better: bool
    digits: int  # decimals shown

    @property
    def change(self) -> float:
        return self.adapted - self.base

    @property
    def change_pct(self) -> float:
        return relative_change(self.base, self.adapted)

    @property
    def improved(self) -> bool:
        return self.adapted < self.base if self.lower_is_better else self.adapted > self.base


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """Where `write_report` put the report, and the markdown for asset metadata."""

    json_path: Path
    markdown_path: Path
    chart_path: Path
    scores_path: Path | None  # the adapted model's ScoredBlocks (for GGUF verification); None when not written
    markdown: str
    control_blocks_path: Path | None = None  # the general-text blocks scored (for the gate); None without control


def relative_change(before: float, after: float) -> float:
    """Change in percent of `before`; NaN when `before` is zero or not finite."""
    if not math.isfinite(before) or before == 0 or not math.isfinite(after):
        return math.nan
    return 100.0 * (after - before) / abs(before)


def metric_rows(report: EvalReport) -> list[MetricRow]:
    """The headline metrics of both models, in table order."""
    spec = [
        ("loss", "loss", True, 4),
        ("perplexity", "perplexity", True, 2),
        ("BLEU", "bleu", False, 2),
        ("ROUGE-1", "rouge1", False, 4),
        ("ROUGE-2", "rouge2", False, 4),
        ("ROUGE-L", "rougeL", False, 4),
        ("MiniLM similarity", "embedding_similarity", False, 4),
    ]
    rows = [
        MetricRow(name, getattr(report.base, attr), getattr(report.adapted, attr), lower, digits)
        for name, attr, lower, digits in spec
    ]
    if report.control is not None:
        control = report.control
        rows.insert(2, MetricRow("general perplexity", control.base_perplexity, control.adapted_perplexity, True, 2))
    return rows


# ---- the asset check -----------------------------------------------------------------------------------------------
def perplexity_improved(report: EvalReport) -> tuple[bool, str]:
    """Pass when the adapted model's test perplexity is below the base model's."""
    base, adapted = report.base.perplexity, report.adapted.perplexity
    if not (math.isfinite(base) and math.isfinite(adapted)):
        return False, f"Test perplexity is not finite: base {base}, adapted {adapted}"
    change = relative_change(base, adapted)
    numbers = f"adapted {adapted:.4f} vs base {base:.4f} ({change:+.2f}%)"
    if adapted < base:
        return True, f"Adapted model's test perplexity is lower: {numbers}"
    return False, f"Adapted model's test perplexity is not below the base model's: {numbers}"


# ---- inputs --------------------------------------------------------------------------------------------------------
def check_test_chunks(chunks: Iterable[Chunk]) -> list[Chunk]:
    """The test chunks as a list; a record that is not a `types.Chunk`, or lacks a source or doc_id, is named."""
    result = list(chunks)
    for index, chunk in enumerate(result):
        if not isinstance(chunk, Chunk):
            raise TypeError(f"Test row {index} is a {type(chunk).__name__}, not a types.Chunk: {chunk!r:.200}")
        for name in ("source", "doc_id"):
            if not getattr(chunk, name):
                raise ValueError(f"Test row {index} has no '{name}' (needs text, source and doc_id): {chunk!r:.200}")
    return result


def _documents_by_source(rows: list[Chunk]) -> dict[str, dict[str, list[Chunk]]]:
    grouped: dict[str, dict[str, list[Chunk]]] = {}
    for row in rows:
        grouped.setdefault(row.source, {}).setdefault(row.doc_id, []).append(row)
    return {
        source: {doc: sorted(chunks, key=lambda r: r.chunk_index) for doc, chunks in sorted(docs.items())}
        for source, docs in sorted(grouped.items())
    }


def allocate_blocks(available: Mapping[str, int], limit: int) -> dict[str, int]:
    """Blocks to score per source: all when `limit` is 0 or enough, else >= 1 each and the rest by size.

    Every source with a block keeps one, so every source gets a perplexity row even if that exceeds `limit`.
    """
    total = sum(available.values())
    if limit == 0 or total <= limit:
        return dict(available)
    present = {source: count for source, count in available.items() if count > 0}
    allocation = {source: 1 for source in present}
    spare = limit - len(present)
    if spare > 0:
        rest = {source: count - 1 for source, count in present.items()}
        rest_total = sum(rest.values())
        quotas = {source: spare * count / rest_total for source, count in rest.items()}
        for source, quota in quotas.items():
            allocation[source] += int(quota)
        leftover = limit - sum(allocation.values())
        # Largest remainder first, then the source name, so the split is deterministic.
        for source in sorted(quotas, key=lambda s: (int(quotas[s]) - quotas[s], s))[:leftover]:
            allocation[source] += 1
    return {source: min(allocation.get(source, 0), count) for source, count in available.items()}


# ---- model passes --------------------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("EvalConfig.device is 'cuda' but torch sees no CUDA device")
    return device


def adapter_weights_sha256(adapter_dir: Path) -> str:
    """sha256 of the adapter's weights file ("" when the folder has none), to tie scores to the adapter."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS_FILE
    return sha256_file(path) if path.exists() else ""


def load_base_model(base_model_dir: Path, device: str, dtype: str) -> tuple[Any, Any]:
    """Model (eval mode, on `device`) and tokenizer from a HF folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from cpt_assets.lib.base_model import load_tokenizer

    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / "config.json").exists():
        raise FileNotFoundError(f"Base model folder {base_model_dir} has no config.json")
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=getattr(torch, dtype))
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' stubs type .to() too narrowly
    return model, load_tokenizer(base_model_dir)


@dataclass
class PreparedInputs:
    """Token-level inputs shared by both models."""

    blocks: dict[str, list[list[int]]]  # source -> scored blocks
    documents: dict[str, int]  # source -> documents
    available_blocks: int
    samples: list[tuple[Chunk, list[int], list[int]]]  # chunk, prompt ids, reference ids


def prepare_inputs(rows: list[Chunk], tokenizer: Any, config: EvalConfig) -> PreparedInputs:
    """Pack each source's documents into blocks (bounded), and pick the continuation samples."""
    separator_id = document_separator_id(tokenizer)  # what training packs between documents: the same stream
    rng = random.Random(config.seed)
    by_source = _documents_by_source(rows)
    packed = {
        source: pack(
            document_stream(
                tokenize_texts(
                    (DOCUMENT_CHUNK_SEPARATOR.join(c.text for c in chunks) for chunks in docs.values()), tokenizer
                ),
                separator_id,
            ),
            config.block_size,
            keep_tail=True,
        )
        for source, docs in by_source.items()
    }
    available = {source: len(blocks) for source, blocks in packed.items()}
    if not any(available.values()):
        raise ValueError(f"The {len(rows)} test rows hold no text to score (every document tokenizes to < 2 tokens)")
    allocation = allocate_blocks(available, config.max_eval_blocks)
    blocks = {
        source: [packed[source][i] for i in sorted(rng.sample(range(available[source]), allocation[source]))]
        for source in packed
    }

    # Samples: shuffle each source's long-enough chunks, then take them round-robin so every source is represented.
    queues = []
    for docs in by_source.values():
        candidates = []
        for chunks in docs.values():
            for chunk in chunks:
                ids = tokenizer(chunk.text, add_special_tokens=False)["input_ids"]
                if len(ids) >= MIN_SAMPLE_TOKENS:
                    candidates.append((chunk, ids))
        rng.shuffle(candidates)
        queues.append(candidates)
    samples = []
    while len(samples) < config.max_samples and any(queues):
        for queue in queues:
            if queue and len(samples) < config.max_samples:
                chunk, ids = queue.pop()
                prompt_len = min(config.prompt_tokens, len(ids) // 2)
                samples.append((chunk, ids[:prompt_len], ids[prompt_len : prompt_len + config.max_new_tokens]))
    return PreparedInputs(
        blocks=blocks,
        documents={source: len(docs) for source, docs in by_source.items()},
        available_blocks=sum(available.values()),
        samples=samples,
    )


def _score_model(
    model: Any, prepared: PreparedInputs, config: EvalConfig, pad_id: int, eos_id: int
) -> tuple[dict[str, list[Any]], list[list[int]], float, float]:
    """Per-token NLL of every block per source, generated ids per sample, and the seconds each pass took."""
    started = time.perf_counter()
    per_source = {
        source: block_nll(model, blocks, config.batch_size, pad_id) for source, blocks in prepared.blocks.items()
    }
    loss_seconds = time.perf_counter() - started
    started = time.perf_counter()
    generated = greedy_decode(
        model,
        [prompt for _, prompt, _ in prepared.samples],
        [len(reference) for _, _, reference in prepared.samples],
        [eos_id],
        batch_size=config.generation_batch_size,
        pad_id=pad_id,
    )
    return per_source, generated, loss_seconds, time.perf_counter() - started


def merge_for_scoring(model: Any, dtype: str) -> float:
    """Fold the LoRA weights into the layers (peft `merge_adapter`) before the adapted passes; the seconds it took.

    In float32 the merged weights are exactly those `merge.merge_adapter` writes (the same peft merge, W + B·A·s) and
    the GGUF is converted from, so the adapted figures are the merged model's, and a forward pass costs what the base
    model's does instead of about a quarter more for the unmerged LoRA branch (CPU main job). In bfloat16/float16 the
    adapter stays unmerged: rounding W + B·A to 8 or 11 mantissa bits would lose most of the small update, so those
    figures would not be the adapter's. 0.0 when nothing was merged.
    """
    if dtype != "float32":
        return 0.0
    started = time.perf_counter()
    model.base_model.merge_adapter()
    return time.perf_counter() - started


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def evaluate_models(
    base_model_dir: Path | str,
    adapter_dir: Path | str,
    test_rows: Iterable[Chunk],
    config: EvalConfig | None = None,
    control_texts: Sequence[str] | None = None,
) -> EvalReport:
    """Score the base model and the base + adapter on the test split (and on general text, when given).

    Args:
        base_model_dir: HF folder of the base model (safetensors + tokenizer).
        adapter_dir: peft adapter folder (adapter_config.json + weights) trained on that base.
        test_rows: the test split's chunks (`types.Chunk`, as `lake.read_split` returns them).
        config: sampling, bounds and device; defaults to `EvalConfig()`.
        control_texts: general-text documents (control_text's held-out part): both models' perplexity on them is
            the forgetting control (`report.control`); None or empty skips it.

    Returns:
        An `EvalReport` with both models' scores, per-source perplexity, samples, timings, and the adapted model's
        scored blocks (`report.scored`) for GGUF verification.
    """
    import torch

    config = config or EvalConfig()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG_FILE).exists():
        raise FileNotFoundError(f"Adapter folder {adapter_dir} has no {ADAPTER_CONFIG_FILE}")
    rows = check_test_chunks(test_rows)
    if not rows:
        raise ValueError("The test split has no rows to evaluate")
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _run_evaluation(Path(base_model_dir), adapter_dir, rows, config, device, list(control_texts or []))
    finally:
        torch.set_num_threads(previous_threads)


def _run_evaluation(
    base_model_dir: Path, adapter_dir: Path, rows: list[Chunk], config: EvalConfig, device: str, control: list[str]
) -> EvalReport:
    import torch
    from peft import PeftModel

    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    started_all = time.perf_counter()

    started = time.perf_counter()
    base, tokenizer = load_base_model(base_model_dir, device, config.dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    timings["load"] = time.perf_counter() - started
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    started = time.perf_counter()
    prepared = prepare_inputs(rows, tokenizer, config)
    control_blocks = text_blocks(control, tokenizer, config.block_size, config.max_control_blocks) if control else []
    timings["tokenize"] = time.perf_counter() - started

    with model.disable_adapter():
        base_losses, base_ids, base_loss_s, base_gen_s = _score_model(model, prepared, config, pad_id, eos_id)
        started = time.perf_counter()
        base_control = block_nll(model, control_blocks, config.batch_size, pad_id)
        timings["base_control"] = time.perf_counter() - started
    timings["merge"] = merge_for_scoring(model, config.dtype)  # the adapted passes run on the merged weights
    adapted_losses, adapted_ids, adapted_loss_s, adapted_gen_s = _score_model(model, prepared, config, pad_id, eos_id)
    started = time.perf_counter()
    adapted_control = block_nll(model, control_blocks, config.batch_size, pad_id)
    timings["adapted_control"] = time.perf_counter() - started
    control_scores = None
    if control_blocks:
        base_nll, adapted_nll = np.concatenate(base_control), np.concatenate(adapted_control)
        control_scores = ControlScores(
            blocks=tuple(tuple(block) for block in control_blocks),
            tokens=int(base_nll.size),
            base_perplexity=perplexity(base_nll),
            adapted_perplexity=perplexity(adapted_nll),
        )
    timings.update(
        base_loss=base_loss_s, adapted_loss=adapted_loss_s, base_generation=base_gen_s, adapted_generation=adapted_gen_s
    )

    started = time.perf_counter()
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    references = [decode(reference) for _, _, reference in prepared.samples]
    base_texts = [decode(ids) for ids in base_ids]
    adapted_texts = [decode(ids) for ids in adapted_ids]
    base_scores, base_bleu = score_texts(base_texts, references, device=device)
    adapted_scores, adapted_bleu = score_texts(adapted_texts, references, device=device)
    timings["text_metrics"] = time.perf_counter() - started

    per_source = []
    for source, blocks in prepared.blocks.items():
        base_nll = np.concatenate(base_losses[source]) if blocks else np.zeros(0)
        adapted_nll = np.concatenate(adapted_losses[source]) if blocks else np.zeros(0)
        per_source.append(
            SourcePerplexity(
                source=source,
                documents=prepared.documents[source],
                blocks=len(blocks),
                tokens=int(base_nll.size),
                base_loss=float(base_nll.mean()) if base_nll.size else math.nan,
                base_perplexity=perplexity(base_nll),
                adapted_loss=float(adapted_nll.mean()) if adapted_nll.size else math.nan,
                adapted_perplexity=perplexity(adapted_nll),
            )
        )
    eval_tokens = sum(row.tokens for row in per_source)

    def scores(losses, texts_scores, bleu, loss_s, gen_s, ids) -> ModelScores:
        nll = np.concatenate([array for arrays in losses.values() for array in arrays])
        return ModelScores(
            loss=float(nll.mean()),
            perplexity=perplexity(nll),
            bleu=bleu,
            sentence_bleu=_mean([s.bleu for s in texts_scores]),
            rouge1=_mean([s.rouge1 for s in texts_scores]),
            rouge2=_mean([s.rouge2 for s in texts_scores]),
            rougeL=_mean([s.rougeL for s in texts_scores]),
            embedding_similarity=_mean([s.embedding_similarity for s in texts_scores]),
            loss_seconds=loss_s,
            generation_seconds=gen_s,
            generated_tokens=sum(len(x) for x in ids),
        )

    scored = ScoredBlocks(
        model="adapted",
        dtype=config.dtype,
        block_size=config.block_size,
        separator_id=document_separator_id(tokenizer),
        sources=tuple(source for source, blocks in prepared.blocks.items() for _ in blocks),
        blocks=tuple(tuple(block) for blocks in prepared.blocks.values() for block in blocks),
        token_nll=tuple(tuple(float(v) for v in array) for arrays in adapted_losses.values() for array in arrays),
        adapter_sha256=adapter_weights_sha256(adapter_dir),
    )
    samples = [
        ContinuationSample(
            chunk_id=row.chunk_id,
            doc_id=row.doc_id,
            source=row.source,
            prompt=decode(prompt),
            reference=reference_text,
            base_text=base_text,
            adapted_text=adapted_text,
            prompt_tokens=len(prompt),
            reference_tokens=len(reference),
            base=base_score,
            adapted=adapted_score,
        )
        for (row, prompt, reference), reference_text, base_text, adapted_text, base_score, adapted_score in zip(
            prepared.samples, references, base_texts, adapted_texts, base_scores, adapted_scores, strict=True
        )
    ]
    timings["total"] = time.perf_counter() - started_all
    report = EvalReport(
        base=scores(base_losses, base_scores, base_bleu, base_loss_s, base_gen_s, base_ids),
        adapted=scores(adapted_losses, adapted_scores, adapted_bleu, adapted_loss_s, adapted_gen_s, adapted_ids),
        per_source=per_source,
        samples=samples,
        scored=scored,
        control=control_scores,
        test_rows=len(rows),
        test_documents=sum(prepared.documents.values()),
        eval_tokens=eval_tokens,
        eval_blocks=sum(len(blocks) for blocks in prepared.blocks.values()),
        available_blocks=prepared.available_blocks,
        device=device,
        base_model_dir=str(base_model_dir),
        adapter_dir=str(adapter_dir),
        config=asdict(config),
        timings=timings,
    )
    log.info(
        "Evaluated %d blocks (%d tokens) and %d samples in %.1fs: perplexity base %.3f, adapted %.3f",
        report.eval_blocks,
        eval_tokens,
        len(samples),
        timings["total"],
        report.base.perplexity,
        report.adapted.perplexity,
    )
    return report


# ---- rendering -----------------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _fmt_change(row: MetricRow) -> str:
    if not (math.isfinite(row.base) and math.isfinite(row.adapted)):
        return "n/a"
    pct = row.change_pct
    pct_text = f" ({pct:+.1f}%)" if math.isfinite(pct) else ""
    return f"{row.change:+.{row.digits}f}{pct_text}"


def markdown_table(report: EvalReport) -> str:
    """Markdown: the metric table (metric | base | adapted | change), then per-source perplexity."""
    lines = ["| metric | base | adapted | change |", "|---|---:|---:|---:|"]
    for row in metric_rows(report):
        lines.append(
            f"| {row.name} | {_fmt(row.base, row.digits)} | {_fmt(row.adapted, row.digits)} | {_fmt_change(row)} |"
        )
    lines += [
        "",
        f"{report.eval_tokens} tokens in {report.eval_blocks} packed blocks of {report.config.get('block_size', '?')} "
        f"({report.available_blocks} available), {len(report.samples)} continuation samples, "
        f"{report.test_rows} test chunks from {report.test_documents} documents.",
        "",
        "| source | documents | tokens | base perplexity | adapted perplexity | change |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report.per_source:
        lines.append(
            f"| {row.source} | {row.documents} | {row.tokens} | {_fmt(row.base_perplexity, 2)} | "
            f"{_fmt(row.adapted_perplexity, 2)} | {_fmt(row.change_pct, 1)}% |"
        )
    return "\n".join(lines) + "\n"


def rich_table(report: EvalReport, width: int = 110) -> str:
    """The comparison and per-source tables rendered as plain text for the run log."""
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    metrics = Table(title="Base vs adapted on the test split")
    for column in ("metric", "base", "adapted", "change"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for row in metric_rows(report):
        metrics.add_row(row.name, _fmt(row.base, row.digits), _fmt(row.adapted, row.digits), _fmt_change(row))
    console.print(metrics)
    sources = Table(title="Perplexity per source")
    for column in ("source", "documents", "tokens", "base", "adapted", "change %"):
        sources.add_column(column, justify="left" if column == "source" else "right")
    for row in report.per_source:
        sources.add_row(
            row.source,
            str(row.documents),
            str(row.tokens),
            _fmt(row.base_perplexity, 2),
            _fmt(row.adapted_perplexity, 2),
            _fmt(row.change_pct, 1),
        )
    console.print(sources)
    return buffer.getvalue()


CHART_WIDTH_PX = 1000


def draw_chart(report: EvalReport, path: Path) -> None:
    """Bar chart PNG: one small panel per headline metric (base vs adapted), per-source perplexity below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = ("#8c8c8c", "#1f77b4")
    rows = metric_rows(report)
    # At most CHART_WIDTH_PX wide: Dagster 1.13 shows it in a dialog about 1110 px wide inside (1440 px window).
    figure = Figure(figsize=(min(CHART_WIDTH_PX / 100, 1.7 * len(rows)), 6.5), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, len(rows), height_ratios=(1, 1.1))
    for column, row in enumerate(rows):
        axis = figure.add_subplot(grid[0, column])
        values = [row.base if math.isfinite(row.base) else 0.0, row.adapted if math.isfinite(row.adapted) else 0.0]
        bars = axis.bar(["base", "adapted"], values, color=colors)
        axis.bar_label(
            bars, labels=[_fmt(row.base, min(row.digits, 3)), _fmt(row.adapted, min(row.digits, 3))], fontsize=8
        )
        better = "lower is better" if row.lower_is_better else "higher is better"
        axis.set_title(f"{row.name}\n({better})", fontsize=9)
        axis.tick_params(labelsize=8)
        axis.margins(y=0.15)
    axis = figure.add_subplot(grid[1, :])
    sources = [row.source for row in report.per_source]
    positions = list(range(len(sources)))
    for offset, (label, attr, color) in enumerate(
        (("base", "base_perplexity", colors[0]), ("adapted", "adapted_perplexity", colors[1]))
    ):
        values = [getattr(row, attr) for row in report.per_source]
        bars = axis.bar(
            [p + (offset - 0.5) * 0.4 for p in positions],
            [v if math.isfinite(v) else 0.0 for v in values],
            width=0.4,
            label=label,
            color=color,
        )
        axis.bar_label(bars, labels=[_fmt(v, 1) for v in values], fontsize=8)
    axis.set_xticks(positions, sources)
    axis.set_ylabel("perplexity")
    axis.set_title("Test perplexity per source (lower is better)", fontsize=10)
    axis.legend()
    axis.margins(y=0.15)
    figure.suptitle(
        f"Base vs adapted: {report.eval_tokens} test tokens, {len(report.samples)} continuation samples", fontsize=11
    )
    figure.savefig(path, format="png", dpi=100)


def write_report(report: EvalReport, out_dir: Path | str) -> ReportFiles:
    """Write the report's files into `out_dir`, atomically.

    report.json (every figure), report.md and model_comparison.png; scores.json (the adapted model's scored blocks)
    when the report carries them; control_blocks.json (the general-text blocks both models were scored on) when it
    has a control set.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        json_path=out_dir / EVAL_REPORT_JSON,
        markdown_path=out_dir / EVAL_REPORT_MD,
        chart_path=out_dir / EVAL_CHART,
        scores_path=out_dir / EVAL_SCORES if report.scored is not None else None,
        markdown=markdown_table(report),
        control_blocks_path=out_dir / EVAL_CONTROL_BLOCKS if report.control is not None else None,
    )
    if report.scored is not None and files.scores_path is not None:
        write_scored_blocks(report.scored, files.scores_path)
    if report.control is not None and files.control_blocks_path is not None:
        write_token_blocks(report.control.blocks, files.control_blocks_path)
    with atomic_path(files.json_path) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    with atomic_path(files.markdown_path) as tmp:
        tmp.write_text(files.markdown)
    with atomic_path(files.chart_path) as tmp:
        draw_chart(report, tmp)
    return files


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
