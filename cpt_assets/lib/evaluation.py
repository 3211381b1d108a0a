"""Base model vs adapted model on the test split: loss, perplexity, continuation quality and weight change.

The base model is loaded once and the LoRA adapter is put on top with peft; `disable_adapter()` turns the adapter
off for the base numbers, so both models are scored from one copy of the weights on identical inputs (the test
suite checks that the base numbers equal those of the base model loaded alone).

- Loss and perplexity are token-weighted over packed blocks (documents joined with EOS, cut into `block_size`
  tokens, as `packing.pack_blocks` does for training), the shape the model was trained on; each source is packed
  on its own so every block belongs to one source and the per-source rows are exact.
- Continuations: the opening of each sampled test chunk is the prompt; greedy decoding writes as many tokens as the
  true continuation that follows it (bounded by `max_new_tokens`), scored with BLEU, ROUGE and MiniLM similarity
  (see `metrics.py`).
- Weight change: the adapter is merged into a copy of the model and every parameter tensor is diffed against the
  base, so the figures show what `merge_and_unload` really alters (LoRA layers, modules_to_save, anything else).

`write_report` turns an `EvalReport` into report.json, report.md and model_comparison.png; `rich_table` renders
the same figures for the run log; `perplexity_improved` is the asset check's pure logic.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpt_assets.lib.lake import atomic_path
from cpt_assets.lib.metrics import TextScores, perplexity, score_texts
from cpt_assets.lib.packing import DOCUMENT_CHUNK_SEPARATOR, document_separator_id

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
MIN_SAMPLE_TOKENS = 16  # a chunk shorter than this has no meaningful opening/continuation split
# Module types reported first, in Llama's order; any other parameter's type follows alphabetically.
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


@dataclass
class EvalConfig:
    """How the evaluation samples, bounds and runs."""

    max_samples: int = 20  # test chunks whose continuation is scored (seed: 10; 20 costs ~1 CPU-minute more; 0: none)
    prompt_tokens: int = 64  # opening tokens given as prompt (at most half of a chunk)
    max_new_tokens: int = 64  # generated tokens per sample; the reference is the same span of the true text
    block_size: int = 512  # tokens per packed block for loss and perplexity
    max_eval_blocks: int = 0  # packed blocks scored per model (0: the whole test split); a bound spreads them over
    # sources, each source getting >= 1
    batch_size: int = 4  # packed blocks per forward pass (logits take batch x block_size x vocab floats)
    generation_batch_size: int = 16  # prompts decoded together; decoding is memory-bound, so larger batches are ~free
    seed: int = 0  # picks the sampled chunks and the scored blocks
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    dtype: str = "float32"  # weights and activations while evaluating
    change_tolerance: float = 1e-6  # |delta| above this times the tensor's RMS counts as a changed parameter
    num_threads: int = 0  # torch CPU threads while evaluating (0: leave torch's setting), restored afterwards

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_eval_blocks", "num_threads"):
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
        if not 0 <= self.change_tolerance < 1:
            raise ValueError(f"EvalConfig.change_tolerance must be in [0, 1), got {self.change_tolerance}")


# ---- records -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TestRow:
    """One chunk of the test split, as evaluation needs it."""

    text: str
    source: str
    doc_id: str
    chunk_id: str = ""
    chunk_index: int = 0


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
class ModuleWeightChange:
    """How much merging the adapter alters one module type (e.g. all q_proj weights)."""

    module_type: str
    adapted: bool  # the adapter carries a LoRA layer or a trained copy for this module type
    tensors: int
    parameters: int
    changed: int  # parameters with |delta| > change_tolerance * RMS of their tensor
    relative_frobenius: float  # ||delta||_F / ||W||_F over all tensors of the type
    max_abs_delta: float

    @property
    def share_changed(self) -> float:
        return self.changed / self.parameters if self.parameters else 0.0


@dataclass(frozen=True, slots=True)
class EvalReport:
    """Everything `evaluate_models` measured; `to_dict()` gives it as JSON-ready data."""

    base: ModelScores
    adapted: ModelScores
    per_source: list[SourcePerplexity] = field(default_factory=list)
    samples: list[ContinuationSample] = field(default_factory=list)
    weight_changes: list[ModuleWeightChange] = field(default_factory=list)
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

    @property
    def parameters(self) -> int:
        return sum(row.parameters for row in self.weight_changes)

    @property
    def changed_parameters(self) -> int:
        return sum(row.changed for row in self.weight_changes)

    @property
    def share_changed(self) -> float:
        return self.changed_parameters / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Every figure as plain JSON data (NaN and infinities become null)."""
        data = asdict(self)
        for row, record in zip(data["per_source"], self.per_source, strict=True):
            row["change_pct"] = record.change_pct
        for row, record in zip(data["weight_changes"], self.weight_changes, strict=True):
            row["share_changed"] = record.share_changed
        data["metrics"] = [
            asdict(row) | {"change": row.change, "change_pct": row.change_pct} for row in metric_rows(self)
        ]
        data["totals"] = {
            "parameters": self.parameters,
            "changed_parameters": self.changed_parameters,
            "share_changed": self.share_changed,
        }
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
    markdown: str


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
        ("embedding similarity", "embedding_similarity", False, 4),
    ]
    return [
        MetricRow(name, getattr(report.base, attr), getattr(report.adapted, attr), lower, digits)
        for name, attr, lower, digits in spec
    ]


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
def to_test_rows(rows: Iterable[Any]) -> list[TestRow]:
    """Dicts or records (Chunk, a parquet row) with text, source and doc_id; chunk_id/chunk_index if present."""
    result = []
    for index, row in enumerate(rows):
        get = row.get if isinstance(row, Mapping) else lambda name, default=None, row=row: getattr(row, name, default)
        values = {}
        for name in ("text", "source", "doc_id"):
            value = get(name)
            if value is None:
                raise ValueError(f"Test row {index} has no '{name}' (needs text, source and doc_id): {row!r:.200}")
            values[name] = str(value)
        result.append(
            TestRow(
                **values,
                chunk_id=str(get("chunk_id") or f"{values['doc_id']}#{index}"),
                chunk_index=int(get("chunk_index") or 0),
            )
        )
    return result


def pack_eval_blocks(token_lists: Iterable[list[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Concatenate documents with EOS after each and cut into blocks of `block_size` tokens.

    The recipe of `packing.pack_blocks` (training), except that the last block keeps what is left (if it has at
    least 2 tokens, one to predict): a source whose test documents fill less than one block still gets scored, and
    scores are token-weighted, so a short block counts for what it holds.
    """
    stream: list[int] = []
    for tokens in token_lists:
        if tokens:
            stream.extend(tokens)
            stream.append(eos_id)
    blocks = [stream[start : start + block_size] for start in range(0, len(stream), block_size)]
    return [block for block in blocks if len(block) >= 2]


def _documents_by_source(rows: list[TestRow]) -> dict[str, dict[str, list[TestRow]]]:
    grouped: dict[str, dict[str, list[TestRow]]] = {}
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


def block_losses(model: Any, blocks: list[list[int]], batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """(sum of next-token negative log-likelihoods, tokens predicted) per block."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size]
            width = max(len(block) for block in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, block in enumerate(batch):
                ids[row, : len(block)] = torch.tensor(block)
                mask[row, : len(block)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
            sums = nll.sum(dim=1).tolist()
            counts = (targets != -100).sum(dim=1).tolist()
            results.extend(zip(sums, counts, strict=True))
    return results


def generate_continuations(
    model: Any, prompts: list[list[int]], lengths: list[int], batch_size: int, pad_id: int, eos_id: int
) -> list[list[int]]:
    """Greedy continuation of each prompt, at most `lengths[i]` tokens, cut at EOS (left-padded batches)."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    outputs: list[list[int]] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch, limits = prompts[start : start + batch_size], lengths[start : start + batch_size]
            width = max(len(prompt) for prompt in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            # A fresh config: greedy, nothing inherited from the checkpoint (repetition penalty, sampling, ...).
            config = GenerationConfig(
                max_new_tokens=max(limits),
                min_new_tokens=0,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            for row, limit in enumerate(limits):
                tokens = generated[row, width:].tolist()[:limit]
                if eos_id in tokens:
                    tokens = tokens[: tokens.index(eos_id)]
                outputs.append(tokens)
    return outputs


def weight_changes(
    base_params: Mapping[str, Any],
    merged_params: Mapping[str, Any],
    adapted_types: set[str],
    tolerance: float,
) -> list[ModuleWeightChange]:
    """Per module type: parameters whose merged value moved by more than `tolerance` x the tensor's RMS.

    Why relative to RMS: a LoRA delta B@A is dense, so every element of a targeted matrix moves by some amount;
    float32 holds about 7 significant digits (machine epsilon 1.2e-7), so a move below ~1e-6 of the tensor's typical
    magnitude is at the rounding level of the merge itself and cannot be told from arithmetic noise. A zero delta
    (an untrained adapter, whose B starts at zero) counts as no change at any tolerance.
    """
    totals: dict[str, dict[str, float]] = {}
    for name, base in base_params.items():
        if name not in merged_params:
            raise ValueError(f"Parameter {name} of the base model is missing from the merged model")
        module_type = module_type_of(name)
        base32 = base.detach().float().cpu()
        delta = merged_params[name].detach().float().cpu() - base32
        scale = float(base32.pow(2).mean().sqrt()) if base32.numel() else 0.0
        threshold = tolerance * scale if scale > 0 else tolerance
        entry = totals.setdefault(
            module_type, {"tensors": 0, "parameters": 0, "changed": 0, "d2": 0.0, "w2": 0.0, "max": 0.0}
        )
        entry["tensors"] += 1
        entry["parameters"] += base32.numel()
        entry["changed"] += int((delta.abs() > threshold).sum())
        entry["d2"] += float(delta.pow(2).sum())
        entry["w2"] += float(base32.pow(2).sum())
        entry["max"] = max(entry["max"], float(delta.abs().max()) if delta.numel() else 0.0)
        del delta, base32
    order = {name: index for index, name in enumerate(MODULE_ORDER)}
    return [
        ModuleWeightChange(
            module_type=module_type,
            adapted=module_type in adapted_types,
            tensors=int(entry["tensors"]),
            parameters=int(entry["parameters"]),
            changed=int(entry["changed"]),
            relative_frobenius=math.sqrt(entry["d2"] / entry["w2"]) if entry["w2"] > 0 else 0.0,
            max_abs_delta=entry["max"],
        )
        for module_type, entry in sorted(totals.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    ]


def module_type_of(parameter_name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'q_proj'; 'lm_head.weight' -> 'lm_head'."""
    parts = parameter_name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def adapted_module_types(peft_model: Any) -> set[str]:
    """Module types that carry an adapter layer (LoRA and friends) or a trained copy (modules_to_save)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    return {
        name.split(".")[-1]
        for name, module in peft_model.named_modules()
        if isinstance(module, BaseTunerLayer | ModulesToSaveWrapper)
    }


def measure_weight_change(
    peft_model: Any, base_params: Mapping[str, Any], tolerance: float
) -> list[ModuleWeightChange]:
    """Merge the adapter into a copy of `peft_model` and diff every parameter against `base_params`.

    Args:
        peft_model: the base model wrapped by peft (left unmerged).
        base_params: `dict(base.named_parameters())` taken before peft wrapped the base.
        tolerance: see `weight_changes`.
    """
    merged = copy.deepcopy(peft_model).merge_and_unload()
    return weight_changes(base_params, dict(merged.named_parameters()), adapted_module_types(peft_model), tolerance)


def load_base_model(base_model_dir: Path, device: str, dtype: str) -> tuple[Any, Any]:
    """Model (eval mode, on `device`) and tokenizer from a HF folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from cpt_assets.lib.base_model import load_tokenizer

    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / "config.json").exists():
        raise FileNotFoundError(f"Base model folder {base_model_dir} has no config.json")
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=getattr(torch, dtype))
    model.to(device).eval()
    return model, load_tokenizer(base_model_dir)


@dataclass
class PreparedInputs:
    """Token-level inputs shared by both models."""

    blocks: dict[str, list[list[int]]]  # source -> scored blocks
    documents: dict[str, int]  # source -> documents
    available_blocks: int
    samples: list[tuple[TestRow, list[int], list[int]]]  # row, prompt ids, reference ids


def prepare_inputs(rows: list[TestRow], tokenizer: Any, config: EvalConfig) -> PreparedInputs:
    """Pack each source's documents into blocks (bounded), and pick the continuation samples."""
    separator_id = document_separator_id(tokenizer)  # what training packs between documents: the same stream
    rng = random.Random(config.seed)
    by_source = _documents_by_source(rows)
    packed = {
        source: pack_eval_blocks(
            (
                tokenizer(DOCUMENT_CHUNK_SEPARATOR.join(chunk.text for chunk in chunks), add_special_tokens=False)[
                    "input_ids"
                ]
                for chunks in docs.values()
            ),
            config.block_size,
            separator_id,
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
) -> tuple[dict[str, tuple[float, int]], list[list[int]], float, float]:
    """Loss sums per source, generated ids per sample, and the seconds each pass took."""
    started = time.perf_counter()
    per_source = {}
    for source, blocks in prepared.blocks.items():
        losses = block_losses(model, blocks, config.batch_size, pad_id)
        per_source[source] = (sum(nll for nll, _ in losses), sum(count for _, count in losses))
    loss_seconds = time.perf_counter() - started
    started = time.perf_counter()
    generated = generate_continuations(
        model,
        [prompt for _, prompt, _ in prepared.samples],
        [len(reference) for _, _, reference in prepared.samples],
        config.generation_batch_size,
        pad_id,
        eos_id,
    )
    return per_source, generated, loss_seconds, time.perf_counter() - started


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def evaluate_models(
    base_model_dir: Path | str,
    adapter_dir: Path | str,
    test_rows: Iterable[Any],
    config: EvalConfig | None = None,
) -> EvalReport:
    """Score the base model and the base + adapter on the test split.

    Args:
        base_model_dir: HF folder of the base model (safetensors + tokenizer).
        adapter_dir: peft adapter folder (adapter_config.json + weights) trained on that base.
        test_rows: dicts or records with text, source and doc_id (chunk_id and chunk_index used when present).
        config: sampling, bounds and device; defaults to `EvalConfig()`.

    Returns:
        An `EvalReport` with both models' scores, per-source perplexity, samples, weight change and timings.
    """
    import torch

    config = config or EvalConfig()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"Adapter folder {adapter_dir} has no adapter_config.json")
    rows = to_test_rows(test_rows)
    if not rows:
        raise ValueError("The test split has no rows to evaluate")
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _run_evaluation(Path(base_model_dir), adapter_dir, rows, config, device)
    finally:
        torch.set_num_threads(previous_threads)


def _run_evaluation(
    base_model_dir: Path, adapter_dir: Path, rows: list[TestRow], config: EvalConfig, device: str
) -> EvalReport:
    import torch
    from peft import PeftModel

    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    started_all = time.perf_counter()

    started = time.perf_counter()
    base, tokenizer = load_base_model(base_model_dir, device, config.dtype)
    base_params = dict(base.named_parameters())  # the same tensors stay under peft's wrappers, unmodified
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    timings["load"] = time.perf_counter() - started
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    started = time.perf_counter()
    prepared = prepare_inputs(rows, tokenizer, config)
    timings["tokenize"] = time.perf_counter() - started

    with model.disable_adapter():
        base_losses, base_ids, base_loss_s, base_gen_s = _score_model(model, prepared, config, pad_id, eos_id)
    adapted_losses, adapted_ids, adapted_loss_s, adapted_gen_s = _score_model(model, prepared, config, pad_id, eos_id)
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

    started = time.perf_counter()
    changes = measure_weight_change(model, base_params, config.change_tolerance)
    timings["weight_change"] = time.perf_counter() - started

    per_source = []
    for source, blocks in prepared.blocks.items():
        base_nll, tokens = base_losses[source]
        adapted_nll, _ = adapted_losses[source]
        per_source.append(
            SourcePerplexity(
                source=source,
                documents=prepared.documents[source],
                blocks=len(blocks),
                tokens=tokens,
                base_loss=base_nll / tokens if tokens else math.nan,
                base_perplexity=perplexity(base_nll, tokens),
                adapted_loss=adapted_nll / tokens if tokens else math.nan,
                adapted_perplexity=perplexity(adapted_nll, tokens),
            )
        )
    eval_tokens = sum(tokens for _, tokens in base_losses.values())

    def scores(losses, texts_scores, bleu, loss_s, gen_s, ids) -> ModelScores:
        nll = sum(value for value, _ in losses.values())
        return ModelScores(
            loss=nll / eval_tokens,
            perplexity=perplexity(nll, eval_tokens),
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
        weight_changes=changes,
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
    """Markdown: the metric table (metric | base | adapted | change), then per-source perplexity and weight change."""
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
    lines += [
        "",
        "| module | adapted | parameters | changed | share changed | relative change (Frobenius) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report.weight_changes:
        lines.append(
            f"| {row.module_type} | {'yes' if row.adapted else 'no'} | {row.parameters:,} | {row.changed:,} | "
            f"{100 * row.share_changed:.2f}% | {row.relative_frobenius:.3e} |"
        )
    lines.append(
        f"| **all** | | {report.parameters:,} | {report.changed_parameters:,} | {100 * report.share_changed:.2f}% | |"
    )
    return "\n".join(lines) + "\n"


def rich_table(report: EvalReport, width: int = 110) -> str:
    """The comparison, per-source and weight-change tables rendered as plain text for the run log."""
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
    weights = Table(title="Weight change of the merged adapter")
    for column in ("module", "adapted", "parameters", "changed %", "rel. Frobenius"):
        weights.add_column(column, justify="left" if column in ("module", "adapted") else "right")
    for row in report.weight_changes:
        weights.add_row(
            row.module_type,
            "yes" if row.adapted else "no",
            f"{row.parameters:,}",
            f"{100 * row.share_changed:.2f}",
            f"{row.relative_frobenius:.3e}",
        )
    console.print(weights)
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
    """Write report.json (every figure), report.md and model_comparison.png into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        json_path=out_dir / "report.json",
        markdown_path=out_dir / "report.md",
        chart_path=out_dir / "model_comparison.png",
        markdown=markdown_table(report),
    )
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
