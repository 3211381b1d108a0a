"""Continual pretraining across corpus refreshes: the replay mix, the continuation plan and the promotion gate.

Ibrahim et al. 2024 ("Simple and Scalable Strategies to Continually Pre-train LLMs") find that re-warming and
re-decaying the learning rate plus replaying a few percent of earlier data matches retraining from scratch; so a
refresh continues from the promoted adapter on what is new, with a share of general text (against forgetting) and
a share of documents earlier versions trained on. A candidate replaces the promoted model only through
`promotion_decision`, a pure function over `GateInputs`, whichever modules produced the figures.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cpt_assets.lib.lake import ADAPTER_CONFIG_FILE, CONTINUAL_FILE


@dataclass(frozen=True)
class ContinualConfig:
    """Replay and continuation settings (the promotion gate's are GateConfig's)."""

    general_replay_share: float = 0.05  # share of training tokens drawn from general text (control set's replay part)
    earlier_replay_share: float = 0.2  # when continuing: share of tokens from documents earlier versions trained on
    continue_from_promoted: bool = True  # start from the promoted adapter when there is one (else from the base)
    rewarm_steps: int = 1  # linear warm-up steps of a continued run (its schedule then decays again)
    replay_seed: int = 42  # which replay documents are drawn

    def validate(self) -> ContinualConfig:
        for name in ("general_replay_share", "earlier_replay_share"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ContinualConfig.{name} must be in [0, 1), got {value}")
        if self.general_replay_share + self.earlier_replay_share >= 1.0:
            raise ValueError(
                "ContinualConfig.general_replay_share + earlier_replay_share must be < 1 (new documents need a "
                f"share), got {self.general_replay_share} + {self.earlier_replay_share}"
            )
        if self.rewarm_steps < 0:
            raise ValueError(f"ContinualConfig.rewarm_steps must be >= 0, got {self.rewarm_steps}")
        return self


@dataclass(frozen=True)
class GateConfig:
    """How the promotion gate decides.

    Its figures are eval_report's (test split and general-text control); the promoted version is scored again on
    those very blocks.
    """

    forgetting_bound: float = 0.05  # largest allowed relative rise of general-text perplexity over the base
    device: str = "auto"  # where the promoted version is re-scored: "auto" (cuda when available), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if not self.forgetting_bound >= 0:
            raise ValueError(f"GateConfig.forgetting_bound must be >= 0, got {self.forgetting_bound}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"GateConfig.device must be one of auto, cpu, cuda, got {self.device!r}")


# ---- replay mix ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayMix:
    """The training documents of one run, by part, and the tokens (approximate: whitespace words) per part."""

    documents: dict[str, list[str]]  # doc_id -> chunk texts, all parts together
    parts: dict[str, list[str]]  # part ("new", "earlier", "general") -> doc ids
    tokens: dict[str, int]  # part -> tokens

    def table(self) -> list[dict]:
        total = sum(self.tokens.values()) or 1
        return [
            {"part": p, "documents": len(ids), "tokens": self.tokens[p], "share": round(self.tokens[p] / total, 4)}
            for p, ids in self.parts.items()
        ]


def _size(chunks: Sequence[str]) -> int:
    return sum(len(text.split()) for text in chunks)


def _draw(pool: Mapping[str, Sequence[str]], budget: int, rng: random.Random) -> list[str]:
    """Doc ids drawn in a seeded random order until `budget` tokens are reached."""
    ids = sorted(pool)
    rng.shuffle(ids)
    chosen, total = [], 0
    for doc_id in ids:
        if total >= budget:
            break
        chosen.append(doc_id)
        total += _size(pool[doc_id])
    return chosen


def replay_mix(
    new: Mapping[str, Sequence[str]],
    earlier: Mapping[str, Sequence[str]],
    general: Mapping[str, Sequence[str]],
    config: ContinualConfig,
) -> ReplayMix:
    """New documents plus replay, so that general and earlier text make up their configured shares of tokens.

    Args:
        new: documents not trained on before (all train documents for a fresh start).
        earlier: documents earlier versions trained on (empty for a fresh start).
        general: the general-text replay pool.
        config: the shares and the seed of the draw.

    Raises:
        ValueError: a share out of range, or nothing new to train on.
    """
    config.validate()
    new_tokens = sum(_size(c) for c in new.values())
    if new_tokens == 0:
        raise ValueError("replay_mix: no new document has any text; nothing to train on")
    rng = random.Random(config.replay_seed)
    earlier_share = config.earlier_replay_share if earlier else 0.0
    new_share = 1.0 - config.general_replay_share - earlier_share
    total = new_tokens / new_share
    parts = {
        "new": sorted(new),
        "earlier": _draw(earlier, round(total * earlier_share), rng) if earlier_share else [],
        "general": _draw(general, round(total * config.general_replay_share), rng),
    }
    if config.general_replay_share and not general:
        raise ValueError("ContinualConfig.general_replay_share > 0 but the general-text replay pool is empty")
    pools = {"new": new, "earlier": earlier, "general": general}
    documents = {f"{p}:{d}" if p == "general" else d: list(pools[p][d]) for p in parts for d in parts[p]}
    tokens = {p: sum(_size(pools[p][d]) for d in parts[p]) for p in parts}
    return ReplayMix(documents, parts, tokens)


# ---- continuation plan -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ContinuationPlan:
    """Where a training run starts: from the promoted adapter (parent) or from the base, and why."""

    parent_version: str | None  # version id continued from; None: fresh start from the base
    parent_adapter_dir: Path | None
    reason: str


def lora_shape(adapter_dir: Path) -> dict:
    """The parts of a peft adapter_config.json that must match for training to continue from it."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG_FILE).read_text())
    return {
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora")),
        "target_modules": sorted(config.get("target_modules") or []),
    }


def plan_continuation(
    promoted_version: str | None,
    promoted_adapter_dir: Path | None,
    promoted_base_sha256: str | None,
    base_sha256: str,
    wanted_shape: dict,
    splits_changed: bool,
    config: ContinualConfig,
) -> ContinuationPlan:
    """Continue from the promoted adapter when it exists, fits this base and LoRA shape, and the data changed.

    Every fresh start says why, so metadata can show it.
    """
    if not config.continue_from_promoted:
        return ContinuationPlan(None, None, "ContinualConfig.continue_from_promoted is off: fresh start from the base")
    if promoted_version is None or promoted_adapter_dir is None:
        return ContinuationPlan(None, None, "no promoted version yet: fresh start from the base")
    if not (Path(promoted_adapter_dir) / ADAPTER_CONFIG_FILE).is_file():
        return ContinuationPlan(
            None, None, f"promoted version {promoted_version} has no adapter at {promoted_adapter_dir}: fresh start"
        )
    if promoted_base_sha256 != base_sha256:
        return ContinuationPlan(
            None,
            None,
            f"promoted version {promoted_version} was trained on another base model (weights sha256 "
            f"{str(promoted_base_sha256)[:12]} != {base_sha256[:12]}): fresh start from the base",
        )
    shape = lora_shape(promoted_adapter_dir)
    wanted = {**wanted_shape, "target_modules": sorted(wanted_shape["target_modules"])}
    if shape != wanted:
        differs = sorted(k for k in wanted if shape.get(k) != wanted[k])
        return ContinuationPlan(
            None,
            None,
            f"promoted version {promoted_version} has another LoRA shape ({', '.join(differs)}: "
            f"{ {k: shape.get(k) for k in differs} } != { {k: wanted[k] for k in differs} }): fresh start",
        )
    if not splits_changed:
        return ContinuationPlan(
            promoted_version, Path(promoted_adapter_dir), f"splits unchanged since {promoted_version}: continuing"
        )
    return ContinuationPlan(
        promoted_version, Path(promoted_adapter_dir), f"continuing from promoted version {promoted_version}"
    )


# ---- promotion gate --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GateInputs:
    """The figures the gate decides on, all measured on the current test split and the control set."""

    candidate_domain_perplexity: float
    promoted_domain_perplexity: float | None  # None: nothing promoted yet
    base_control_perplexity: float
    candidate_control_perplexity: float
    gguf_checks_passed: bool
    gguf_checks_detail: str = ""


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reason: str
    beats_promoted: bool
    within_forgetting_bound: bool
    gguf_ok: bool
    control_change: float  # relative change of general-text perplexity vs the base


def forgetting(base_control: float, candidate_control: float) -> float:
    """Relative rise of general-text perplexity (0.05 = 5% worse than the base)."""
    return candidate_control / base_control - 1.0


def promotion_decision(inputs: GateInputs, forgetting_bound: float) -> GateDecision:
    """Promote only a candidate that beats the promoted version, stays within the bound and whose GGUF passes."""
    import math

    finite = math.isfinite(inputs.candidate_domain_perplexity)
    beats = finite and (
        inputs.promoted_domain_perplexity is None
        or inputs.candidate_domain_perplexity < inputs.promoted_domain_perplexity
    )
    change = forgetting(inputs.base_control_perplexity, inputs.candidate_control_perplexity)
    within = math.isfinite(change) and change <= forgetting_bound
    reasons = []
    if not beats:
        reasons.append(
            f"domain perplexity {inputs.candidate_domain_perplexity:.4g} does not beat the promoted "
            f"{inputs.promoted_domain_perplexity:.4g}"
            if inputs.promoted_domain_perplexity is not None
            else f"domain perplexity {inputs.candidate_domain_perplexity} is not finite"
        )
    if not within:
        reasons.append(f"general-text perplexity rose {change:+.1%}, beyond the {forgetting_bound:.0%} bound")
    if not inputs.gguf_checks_passed:
        reasons.append(f"GGUF checks failed ({inputs.gguf_checks_detail or 'see gguf_model checks'})")
    promote = beats and within and inputs.gguf_checks_passed
    if promote:
        versus = (
            f"beats the promoted {inputs.promoted_domain_perplexity:.4g}"
            if inputs.promoted_domain_perplexity is not None
            else "first version"
        )
        reason = (
            f"domain perplexity {inputs.candidate_domain_perplexity:.4g} ({versus}); general text {change:+.1%} "
            f"(bound {forgetting_bound:.0%}); GGUF checks pass"
        )
    else:
        reason = "; ".join(reasons)
    return GateDecision(promote, reason, beats, within, inputs.gguf_checks_passed, change)


# ---- scoring: the promoted version on the very blocks eval_report scored the candidate on ----------------------
def perplexities_on_blocks(
    base_model_dir: Path,
    adapter_dir: Path | None,
    blocks: Mapping[str, Sequence[Sequence[int]]],
    batch_size: int = 4,
    device: str = "auto",
) -> dict[str, float]:
    """Block set name -> perplexity of base + `adapter_dir` (None: the base itself), through lib.scoring."""
    import numpy as np
    from peft import PeftModel

    from cpt_assets.lib import scoring
    from cpt_assets.lib.evaluation import load_base_model, merge_for_scoring, resolve_device

    model, tokenizer = load_base_model(Path(base_model_dir), resolve_device(device), "float32")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
        merge_for_scoring(model, "float32")  # as eval_report scores the adapted model: the merged weights
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = {}
    for name, set_blocks in blocks.items():
        losses = scoring.block_nll(model, list(set_blocks), batch_size, pad)
        scores[name] = scoring.perplexity(np.concatenate(losses) if losses else np.zeros(0))
    return scores


# ---- one run's training inputs -----------------------------------------------------------------------------------


def trained_doc_ids(adapter_dir: Path) -> set[str]:
    """Domain doc ids the adapter's lineage was trained on (empty when the file is absent)."""
    path = Path(adapter_dir) / CONTINUAL_FILE
    return set(json.loads(path.read_text())["trained_doc_ids"]) if path.is_file() else set()


@dataclass(frozen=True)
class TrainingInputs:
    plan: ContinuationPlan
    mix: ReplayMix
    trained_doc_ids: list[str]  # the lineage's domain documents after this run

    def record(self) -> dict:
        return {
            "parent_version": self.plan.parent_version or "",
            "reason": self.plan.reason,
            "mix": self.mix.table(),
            "trained_doc_ids": self.trained_doc_ids,
        }


def prepare_training(
    train: Mapping[str, Sequence[str]],
    general: Mapping[str, Sequence[str]],
    promoted: tuple[str, Path, str] | None,
    base_sha256: str,
    wanted_shape: dict,
    config: ContinualConfig,
) -> TrainingInputs:
    """Decide parent and mix: continuing trains on new documents plus replay of earlier ones and general text.

    Args:
        train: the current train split, doc id -> chunk texts.
        general: the general-text replay pool.
        promoted: (version, adapter folder, base sha256) of the promoted version, or None.
        base_sha256: the current base model's weights hash.
        wanted_shape: this run's LoRA shape (see `lora_shape`).
        config: the continual settings.
    """
    config.validate()
    version, adapter_dir, promoted_base = promoted if promoted else (None, None, None)
    earlier_ids = trained_doc_ids(adapter_dir) if adapter_dir else set()
    new_ids = set(train) - earlier_ids
    plan = plan_continuation(version, adapter_dir, promoted_base, base_sha256, wanted_shape, bool(new_ids), config)
    if plan.parent_version is None:
        new_ids, earlier_ids = set(train), set()
    elif not new_ids:  # asked to train with nothing new: the whole train split again, from the parent
        new_ids, earlier_ids = set(train), set()
    earlier = {d: train[d] for d in earlier_ids if d in train}
    mix = replay_mix({d: train[d] for d in new_ids}, earlier, general, config)
    return TrainingInputs(plan, mix, sorted(new_ids | earlier_ids))
