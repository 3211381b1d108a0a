"""Continual pretraining of a causal LM with a LoRA adapter, through transformers' Trainer.

The seed notebooks' recipe, made a function an asset can call: documents packed into fixed-length blocks
(`cpt_assets.lib.packing`), PEFT LoRA with the seeds' defaults (r=128, alpha=32, rsLoRA, no dropout, attention and
MLP projections; embed_tokens/lm_head optionally trainable with their own learning rate as unsloth does for
continued pretraining), cosine schedule, evaluation on the validation split from step 0 (the base model) on, and
checkpoints that a killed run resumes from (`cpt_assets.lib.checkpoints`).

Device and method are chosen at run time:
- CPU: plain LoRA in float32, with a token budget, since a 135M model learns at tens of tokens per second there.
  The defaults on the real SmolLM2-135M-Instruct and the corpus PDFs' text (2 cores): 20 steps of 512 tokens at
  70 tokens/s, 4.5 minutes with three evaluations, validation loss 2.625 (base) -> 2.522 -> 2.499.
- CUDA: unsloth's FastLanguageModel when installed (fastest measured), else peft LoRA in bf16 with Liger's kernels
  and fused linear cross-entropy (the 49,152-wide logits are never built); QLoRA (bitsandbytes 4-bit NF4, double
  quantization, bf16 compute, paged 8-bit AdamW) on request, for models that would not fit in bf16. A path that
  cannot run (no CUDA, a package missing) falls back to peft LoRA and says why in the result.
  Measured in one run on one H100 (random-weight SmolLM2-135M, 2048-token packed blocks, LoRA r=128 on all
  projections; cpt_assets_tests/bench/bench_training_gpu.py): unsloth 238k tokens/s (batch 64, 24.6% MFU),
  peft+Liger 152k (batch 48), QLoRA+Liger 94k (batch 32), against 106k for plain transformers+peft at its
  largest batch (24) and 3.2k for the seeds' Trainer shape (batch 2 x 512, padded). torch.compile with Liger's
  kernels did not finish compiling within 150 s there (Liger's Triton kernels fail under Inductor), so it is off.

We use the Trainer rather than a hand-written loop: it owns gradient accumulation, the schedule, mixed precision,
distributed data parallelism (torchrun/accelerate launch the same function on many GPUs) and, above all, checkpoints
that restore model, optimizer, scheduler, RNG and data order exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from cpt_assets.lib.base_model import has_weights
from cpt_assets.lib.checkpoints import ResumePlan, plan_resume
from cpt_assets.lib.lake import ADAPTER_WEIGHTS_FILE, TRAINING_INFO_FILE, atomic_path
from cpt_assets.lib.packing import pack_blocks
from cpt_assets.lib.scoring import document_texts

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
METHODS = ("auto", "lora", "qlora", "unsloth")
LORA_BIASES = ("none", "all", "lora_only")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class TrainingConfig:
    """Continual-pretraining settings; defaults are the seed notebooks' unless a comment says otherwise."""

    # ---- data ----
    block_size: int = 256  # tokens per packed block (the seeds used 512; 256 keeps the CPU default to minutes)
    max_eval_blocks: int = 24  # validation blocks per evaluation, the first ones in order (0: all)
    # ---- LoRA ----
    lora_r: int = 128  # adapter rank
    lora_alpha: int = 32  # scaling numerator: alpha / sqrt(r) with rsLoRA
    lora_dropout: float = 0.0  # dropout on the adapter input
    lora_bias: Literal["none", "all", "lora_only"] = "none"  # which biases train: none, all, lora_only
    use_rslora: bool = True  # rank-stabilised scaling (alpha / sqrt(r) instead of alpha / r)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    train_embeddings: bool = False  # also train embed_tokens and lm_head in full (peft modules_to_save)
    embedding_learning_rate: float = 5e-6  # their own learning rate (unsloth's CPT advice: 2-10x below learning_rate)
    # ---- optimisation ----
    learning_rate: float = 5e-5  # peak learning rate of the adapter
    lr_scheduler_type: str = "cosine"  # transformers scheduler name
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    per_device_batch_size: int = 2  # blocks per forward pass on each device
    gradient_accumulation_steps: int = 8  # forward passes per optimizer step
    num_epochs: float = 1.0  # passes over the training blocks
    max_steps: int = 0  # cap on optimizer steps on any device (0: none)
    max_tokens: int = 0  # cap on training tokens on any device (0: none)
    cpu_max_tokens: int = 10_240  # budget on CPU only, where a 135M model trains at ~70 tokens/s on 2 cores (0: none)
    cpu_gradient_accumulation_steps: int = 1  # on CPU: more, smaller optimizer steps inside the small budget
    gradient_checkpointing: bool = False  # recompute activations to save memory (slower)
    # ---- logging, evaluation, checkpoints ----
    logging_steps: int = 1  # log the training loss every N optimizer steps
    eval_steps: int = 10  # evaluate on validation every N optimizer steps (and at step 0 and at the end)
    save_steps: int = 500  # checkpoint every N optimizer steps (and at the end)
    save_total_limit: int = 3  # checkpoints kept
    seed: int = 42  # seeds Python, NumPy, torch and the data order
    # ---- device and speed ----
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    method: str = "auto"  # auto, lora, qlora or unsloth; auto: unsloth (else bf16 LoRA) on CUDA, fp32 LoRA on CPU
    torch_compile: bool = False  # torch.compile the model (with Liger's kernels it did not compile in 150 s; bench)
    fused_cross_entropy: bool | None = None  # Liger fused linear cross-entropy + kernels; None: on CUDA when installed
    eval_batch_size: int = 0  # blocks per evaluation pass (0: per_device_batch_size)
    num_processes: int = 0  # training processes (torchrun, DDP): 0 = one per visible GPU, 1 on CPU
    # ---- CUDA profile: on a GPU these replace the seed-sized settings above (0: keep the field above) ----
    # Chosen from H200 runs (README, measured results): on all 80 corpus PDFs one epoch at 5e-5 lowered validation
    # perplexity 17%, at 2e-4 24%, three epochs at 2e-4 31%; on the default corpus (~0.3M train tokens) three
    # epochs at 2e-4, batch 8 (57 steps) lowered test perplexity 22%, so more steps at a higher rate. Seconds on a GPU.
    cuda_block_size: int = 2048  # block_size on CUDA (capped at the model's context length)
    cuda_batch_size: int = 8  # per_device_batch_size on CUDA
    cuda_gradient_accumulation_steps: int = 1  # gradient_accumulation_steps on CUDA (more optimizer steps per epoch)
    cuda_learning_rate: float = 3e-4  # learning_rate on CUDA
    cuda_num_epochs: float = 5.0  # num_epochs on CUDA

    def validate(self, model_context_length: int | None = None) -> TrainingConfig:
        """Raise ValueError naming the field and value of the first setting out of range.

        Args:
            model_context_length: the model's maximum positions; block_size may not exceed it.
        """
        positive = ("block_size", "lora_r", "per_device_batch_size", "gradient_accumulation_steps", "logging_steps")
        positive += ("eval_steps", "save_steps", "save_total_limit", "cpu_gradient_accumulation_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainingConfig.{name} must be > 0, got {getattr(self, name)}")
        non_negative = ("max_eval_blocks", "max_steps", "max_tokens", "cpu_max_tokens", "warmup_steps")
        non_negative += ("eval_batch_size",)
        non_negative += ("num_processes", "cuda_block_size", "cuda_batch_size", "cuda_gradient_accumulation_steps")
        non_negative += ("cuda_learning_rate", "cuda_num_epochs")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"TrainingConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lora_alpha", "learning_rate", "embedding_learning_rate", "num_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainingConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainingConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"TrainingConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name, allowed in (
            ("device", DEVICES),
            ("method", METHODS),
            ("lora_bias", LORA_BIASES),
            ("lr_scheduler_type", SCHEDULERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainingConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.target_modules:
            raise ValueError("TrainingConfig.target_modules must name at least one module, got ()")
        if model_context_length is not None and self.block_size > model_context_length:
            raise ValueError(
                f"TrainingConfig.block_size must be <= the model's context length {model_context_length}, "
                f"got {self.block_size}"
            )
        return self

    def for_device(self, device: str, model_context_length: int | None = None) -> TrainingConfig:
        """The settings a run on `device` uses: on CUDA the cuda_* profile replaces the seed-sized fields."""
        if device != "cuda":
            return self
        block = self.cuda_block_size or self.block_size
        if model_context_length:
            block = min(block, model_context_length)
        return replace(
            self,
            block_size=block,
            per_device_batch_size=self.cuda_batch_size or self.per_device_batch_size,
            gradient_accumulation_steps=self.cuda_gradient_accumulation_steps or self.gradient_accumulation_steps,
            learning_rate=self.cuda_learning_rate or self.learning_rate,
            num_epochs=self.cuda_num_epochs or self.num_epochs,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Build from plain values (e.g. a Dagster config); unknown keys raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingConfig field(s): {unknown}")
        values = dict(data)
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    def config_hash(self) -> str:
        """A short stable hash of every setting: checkpoints resume only under the same hash."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class LossPoint:
    step: int
    loss: float


@dataclass(frozen=True)
class TrainResult:
    """What a training run did: the asset turns it into metadata."""

    adapter_dir: Path
    device: str  # e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"
    method: str  # lora, qlora or unsloth, as run
    fallback_reason: str  # why the method run differs from the one asked for ("" when it does not)
    precision: str  # fp32 or bf16 (compute), nf4 for QLoRA weights
    speedups: tuple[str, ...]  # e.g. torch.compile, liger fused cross-entropy
    train_losses: tuple[LossPoint, ...]  # training loss per logged optimizer step
    eval_losses: tuple[LossPoint, ...]  # validation loss per evaluation, step 0 is the base model
    steps: int  # optimizer steps done in total (resumed runs count the earlier ones)
    steps_this_run: int  # optimizer steps done by this call
    planned_steps: int
    tokens_seen: int  # training tokens consumed in total
    tokens_per_second: float  # training tokens per second in this call, evaluation and saving excluded
    step_seconds: tuple[float, ...]  # wall time of each optimizer step of this call
    trainable_parameters: int
    total_parameters: int
    peak_memory_bytes: int  # CUDA: max allocated; CPU: peak resident set size of the process
    wall_seconds: float  # whole call: loading, packing, training, evaluation, saving
    adapter_bytes: int
    resumed_from_checkpoint: str  # checkpoint folder name, "" when started fresh
    resume_reason: str
    train_blocks: int
    validation_blocks: int
    block_size: int
    tokens_dropped: int  # train tokens that did not fill a last block
    config_hash: str
    data_fingerprint: str
    embeddings_changed: bool | None  # train_embeddings only: did embed_tokens/lm_head move (unsloth #9326)
    per_device_batch_size: int = 0  # blocks per forward pass as run (after any out-of-memory retry)
    gradient_accumulation_steps: int = 0  # as run
    learning_rate: float = 0.0  # peak learning rate as run (the CUDA profile may differ from the config field)
    world_size: int = 1  # training processes (DDP)
    oom_retries: tuple[str, ...] = ()  # "batch 32 -> 16" for each out-of-memory retry
    gpu_name: str = ""  # e.g. "NVIDIA H200"; "" on CPU

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        """Rebuild from `to_dict` output (e.g. a result file written by a torchrun child)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["adapter_dir"] = Path(values["adapter_dir"])
        for name in ("train_losses", "eval_losses"):
            values[name] = tuple(LossPoint(int(p["step"]), float(p["loss"])) for p in values[name])
        for name in ("speedups", "step_seconds", "oom_retries"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)

    @property
    def trainable_share(self) -> float:
        return self.trainable_parameters / self.total_parameters if self.total_parameters else 0.0

    @property
    def base_eval_loss(self) -> float | None:
        return self.eval_losses[0].loss if self.eval_losses and self.eval_losses[0].step == 0 else None

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_losses[-1].loss if self.eval_losses else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        data["trainable_share"] = self.trainable_share
        return data


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Device, method and speed options resolved before any model is loaded."""

    device: str  # cpu or cuda
    method: str  # lora, qlora or unsloth
    fallback_reason: str
    torch_compile: bool
    fused_cross_entropy: bool
    notes: tuple[str, ...] = field(default=())


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_plan(config: TrainingConfig, has_cuda: bool | None = None) -> RunPlan:
    """Pick device, method and speed options; every downgrade carries a reason.

    Args:
        config: the training config.
        has_cuda: override CUDA detection (tests); None asks torch.

    Raises:
        ValueError: device "cuda" was forced but CUDA is not available.
    """
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    if config.device == "cuda" and not has_cuda:
        raise ValueError("TrainingConfig.device is 'cuda' but torch sees no CUDA device")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and has_cuda) else "cpu"
    notes: list[str] = []
    reason = ""
    method = config.method
    if device == "cpu":
        if method in ("qlora", "unsloth"):
            reason = f"method {method!r} needs CUDA; running plain LoRA in float32 on CPU"
        method = "lora"
    else:
        if method == "auto":
            # unsloth measured fastest on an H100 (bench_training_gpu.py); without it, peft LoRA with Liger kernels.
            method = "unsloth"
        if method == "unsloth" and not is_installed("unsloth"):
            reason = "unsloth is not installed; running peft LoRA in bf16"
            method = "lora"
        if method == "qlora" and not is_installed("bitsandbytes"):
            reason = "bitsandbytes is not installed, so no 4-bit QLoRA; running peft LoRA in bf16"
            method = "lora"
    if reason:
        log.warning("Training method fallback: %s", reason)

    compile_ = config.torch_compile
    if compile_ and method == "unsloth":
        compile_ = False
        notes.append("torch.compile left to unsloth's own kernels")
    fused = config.fused_cross_entropy if config.fused_cross_entropy is not None else device == "cuda"
    if fused and device == "cpu":
        fused = False
        notes.append("Liger kernels need CUDA (Triton); plain cross-entropy on CPU")
    if fused and not is_installed("liger_kernel"):
        fused = False
        notes.append("liger-kernel is not installed; plain cross-entropy (full logits)")
    if fused and method == "unsloth":
        fused = False
        notes.append("unsloth brings its own fused cross-entropy")
    for note in notes:
        log.info("Training plan: %s", note)
    return RunPlan(device, method, reason, bool(compile_), bool(fused), tuple(notes))


def model_context_length(base_model_dir: Path) -> int:
    config = json.loads((Path(base_model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 0)


def check_inputs(
    base_model_dir: Path,
    train_texts: Mapping[str, Sequence[str]] | Sequence[str] | None,
    validation_texts: Mapping[str, Sequence[str]] | Sequence[str] | None,
    config: TrainingConfig,
) -> int:
    """Fail fast, before loading anything heavy. Returns the model's context length.

    Raises:
        FileNotFoundError: the model folder, its config.json or its weights are missing.
        ValueError: a split is missing or empty, or a config value is out of range.
    """
    config.validate()
    base_model_dir = Path(base_model_dir)
    if not base_model_dir.is_dir():
        raise FileNotFoundError(f"Base model folder {base_model_dir} does not exist")
    if not (base_model_dir / "config.json").is_file():
        raise FileNotFoundError(f"Base model folder {base_model_dir} has no config.json")
    if not has_weights(base_model_dir):
        raise FileNotFoundError(f"Base model folder {base_model_dir} has no weights (*.safetensors or *.bin)")
    for name, texts in (("train", train_texts), ("validation", validation_texts)):
        if texts is None:
            raise ValueError(f"The {name} split is missing: no texts were given")
        if not any(text.strip() for text in document_texts(texts)):
            raise ValueError(f"The {name} split is empty: no document has any text")
    context = model_context_length(base_model_dir)
    config.validate(context or None)
    return context


def effective_schedule(config: TrainingConfig, plan: RunPlan, train_blocks: int, world_size: int = 1) -> dict:
    """Micro-batch, accumulation and optimizer steps, with the CPU budget and the token caps applied."""
    cpu = plan.device == "cpu"
    accumulation = config.cpu_gradient_accumulation_steps if cpu else config.gradient_accumulation_steps
    blocks_per_step = config.per_device_batch_size * accumulation * world_size
    tokens_per_step = blocks_per_step * config.block_size
    batches = math.ceil(train_blocks / (config.per_device_batch_size * world_size))
    steps_per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    steps = math.ceil(config.num_epochs * steps_per_epoch)
    caps = []
    if config.max_steps:
        caps.append(config.max_steps)
    token_cap = config.max_tokens
    if plan.device == "cpu" and config.cpu_max_tokens:
        token_cap = min(token_cap, config.cpu_max_tokens) if token_cap else config.cpu_max_tokens
    if token_cap:
        caps.append(max(token_cap // tokens_per_step, 1))
    budget_limited = bool(caps) and min(caps) < steps
    if budget_limited:
        steps = min(caps)
    return {
        "gradient_accumulation_steps": accumulation,
        "tokens_per_step": tokens_per_step,
        "steps_per_epoch": steps_per_epoch,
        "planned_steps": steps,
        "max_steps_arg": steps if budget_limited else -1,
    }


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def base_model_identity(base_model_dir: Path) -> list[list]:
    """Name, size and modification time of the model's config and weight files.

    A base model re-exported into the same folder must not continue an adapter trained on the old one; hashing
    hundreds of MB on every call would be slow, and a rewrite changes the modification time anyway.
    """
    names = ("config.json", "*.safetensors", "pytorch_model*.bin")
    files = sorted({p for pattern in names for p in Path(base_model_dir).glob(pattern) if p.is_file()})
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def adapter_identity(adapter_dir: Path) -> str:
    """sha256 of an adapter's weights file (what a continued run starts from)."""
    from cpt_assets.lib.lake import sha256_file

    weights = [p for p in sorted(Path(adapter_dir).glob("adapter_model.*")) if p.is_file()]
    if not weights:
        raise FileNotFoundError(f"init_adapter_dir {adapter_dir} has no adapter_model.safetensors or .bin")
    return sha256_file(weights[0])


def _load_model(base_model_dir: Path, config: TrainingConfig, plan: RunPlan, init_adapter_dir: Path | None = None):
    """The base model with its LoRA adapter attached (fresh, or `init_adapter_dir`'s), ready for the Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    modules_to_save: list[str] | None = list(EMBEDDING_MODULES) if config.train_embeddings else None
    if plan.method == "unsloth":
        return _load_unsloth(base_model_dir, config, modules_to_save)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if plan.method == "qlora":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(base_model_dir), quantization_config=quantization, dtype=torch.bfloat16, device_map={"": local_rank}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    else:
        dtype = torch.bfloat16 if plan.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=dtype)
    if init_adapter_dir is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias=config.lora_bias,
        use_rslora=config.use_rslora,
        target_modules=list(config.target_modules),
        modules_to_save=modules_to_save,
        # With tied input/output embeddings, keep the trained copies tied too (one matrix, as in the base).
        ensure_weight_tying=bool(modules_to_save) and tied,
    )
    # Adapter weights stay float32 under bf16 autocast (peft's default), so AdamW updates are not rounded away.
    return get_peft_model(model, lora)


def _load_unsloth(base_model_dir: Path, config: TrainingConfig, modules_to_save: list[str] | None):
    """Load with unsloth's FastLanguageModel from the local folder, LoRA through its get_peft_model."""
    import torch
    from unsloth import FastLanguageModel  # pyright: ignore[reportMissingImports]  (the optional unsloth extra)

    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(base_model_dir),
        max_seq_length=config.block_size,
        dtype=torch.bfloat16,
        load_in_4bit=False,
        local_files_only=True,
    )
    # embed_tokens/lm_head go through modules_to_save, never target_modules: unsloth drops them there (#9326).
    return FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        target_modules=list(config.target_modules),
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias=config.lora_bias,
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=config.seed,
        use_rslora=config.use_rslora,
        modules_to_save=modules_to_save,
        max_seq_length=config.block_size,
    )


def _embedding_snapshot(model) -> dict[str, Any]:
    return {
        name: param.detach().float().cpu().clone()
        for name, param in model.named_parameters()
        if param.requires_grad and "modules_to_save" in name
    }


def _make_trainer_class():
    """A Trainer whose optimizer gives trainable embeddings their own learning rate (unsloth's CPT recipe)."""
    from transformers import Trainer

    class CptTrainer(Trainer):
        embedding_learning_rate: float | None = None

        def create_optimizer(self, model=None):
            if self.embedding_learning_rate is None or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            assert opt_model is not None, "the Trainer has no model"
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)  # pyright: ignore[reportArgumentType]
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            groups = [
                {"params": [p for n, p in named if "modules_to_save" not in n], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if "modules_to_save" in n], "weight_decay": 0.0},
            ]
            groups[1]["lr"] = self.embedding_learning_rate
            self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
            return self.optimizer

    return CptTrainer


def _make_callback(progress_callback: Callable[[dict], None] | None):
    """Times each optimizer step (up to the loss sync of its log line) and forwards logs to the caller."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self._begin: float | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            # With logging every step, the step's time is taken at its log (after the loss is synced);
            # otherwise here, which on CUDA may miss queued work.
            if args.logging_steps != 1 and self._begin is not None:
                self.step_seconds.append(time.perf_counter() - self._begin)
                self._begin = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs and self._begin is not None:
                self.step_seconds.append(time.perf_counter() - self._begin)
                self._begin = None
            if progress_callback is not None:
                progress_callback({"step": state.global_step, "max_steps": state.max_steps, **logs})

    return StepTimer()


def _finished_state(checkpoint: Path | None):
    """The checkpoint's TrainerState when it already reached its max_steps, else None."""
    if checkpoint is None:
        return None
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    return state if state.max_steps and state.global_step >= state.max_steps else None


def _checkpoint_weights(checkpoint: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    if (checkpoint / ADAPTER_WEIGHTS_FILE).is_file():
        return load_file(str(checkpoint / ADAPTER_WEIGHTS_FILE))
    import torch

    return torch.load(str(checkpoint / "adapter_model.bin"), map_location="cpu", weights_only=True)


def _history(log_history: list[dict]) -> tuple[tuple[LossPoint, ...], tuple[LossPoint, ...]]:
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for entry in log_history:
        if "loss" in entry:
            train[int(entry["step"])] = float(entry["loss"])
        if "eval_loss" in entry:
            evals[int(entry["step"])] = float(entry["eval_loss"])
    as_points = lambda d: tuple(LossPoint(s, d[s]) for s in sorted(d))  # noqa: E731
    return as_points(train), as_points(evals)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error (torch raises OutOfMemoryError; some kernels a plain RuntimeError)."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def smaller_batch(batch: int, accumulation: int) -> tuple[int, int] | None:
    """Half the blocks per forward pass and twice the accumulation (the same global batch), or None at 1."""
    if batch <= 1:
        return None
    return batch // 2, accumulation * 2  # an odd batch loses one block per step; the asset shows the batch run


def _free_cuda_memory() -> None:
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


# Dense bf16 tensor-core peak by the vendors' datasheets, FLOP/s; MFU is "n/a" for other devices.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def mfu(tokens_per_second: float, parameters: int, gpu_name: str, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation of a LoRA step: 4N FLOPs per token over N frozen-base parameters.

    A full fine-tune costs ~6N per token (forward 2N, backward 4N); with the base frozen, the backward pass needs no
    weight gradients for it, so ~2N: 4N in all (the adapter's own FLOPs are below 1% at these ranks). 6N would
    overstate the utilisation by half.
    """
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in gpu_name), None)
    if peak is None or not tokens_per_second:
        return None
    return tokens_per_second * 4 * parameters / (peak * world_size)


def train_adapter(
    base_model_dir: Path,
    train_texts: Mapping[str, Sequence[str]] | Sequence[str] | None,
    validation_texts: Mapping[str, Sequence[str]] | Sequence[str] | None,
    config: TrainingConfig,
    adapter_dir: Path,
    checkpoints_dir: Path,
    progress_callback: Callable[[dict], None] | None = None,
    init_adapter_dir: Path | None = None,
) -> TrainResult:
    """Continually pretrain a LoRA adapter on the train split, validating on the validation split.

    Args:
        base_model_dir: a Hugging Face model folder (config.json, safetensors, tokenizer).
        train_texts: train documents: a list of texts, or a mapping doc id -> ordered chunk texts.
        validation_texts: validation documents, same forms.
        config: the training settings (validated here against the model's context length).
        adapter_dir: where the final adapter goes (replaced atomically, with `cpt_training.json` beside it).
        checkpoints_dir: the Trainer's checkpoints; a later call with the same config and data resumes from the
            newest complete one.
        progress_callback: called with each log line (step, max_steps, loss or eval_loss, ...).
        init_adapter_dir: continue training this adapter (same base and LoRA shape; `lib.continual` checks)
            instead of a fresh LoRA; its weights' hash is part of the resume key.

    Returns:
        The losses, throughput, sizes and decisions of the run.

    Raises:
        FileNotFoundError: the model folder or its weights are missing.
        ValueError: a split is missing or empty, too short for one block, or the config is out of range.
    """
    started = time.perf_counter()
    base_model_dir, adapter_dir, checkpoints_dir = Path(base_model_dir), Path(adapter_dir), Path(checkpoints_dir)
    context_length = check_inputs(base_model_dir, train_texts, validation_texts, config)
    plan = resolve_plan(config)
    config = config.for_device(plan.device, context_length or None)  # the CUDA profile, when on a GPU
    if plan.method == "unsloth":
        # unsloth patches transformers and peft when imported; it must come first to patch them fully.
        if "transformers" in sys.modules and "unsloth" not in sys.modules:
            log.warning("transformers was imported before unsloth; some of unsloth's patches may not apply")
        try:
            import unsloth  # noqa: F401  # pyright: ignore[reportMissingImports]
        except Exception as error:  # installed but unusable here (its versions pins, no supported GPU, ...)
            reason = f"unsloth is installed but failed to import ({type(error).__name__}: {error}); running peft LoRA"
            log.warning("Training method fallback: %s", reason)
            plan = replace(resolve_plan(replace(config, method="lora")), fallback_reason=reason)

    import torch
    from transformers import AutoTokenizer, TrainingArguments, default_data_collator, set_seed

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    assert train_texts is not None and validation_texts is not None  # check_inputs raised otherwise
    train = pack_blocks(train_texts, tokenizer, config.block_size)
    validation = pack_blocks(validation_texts, tokenizer, config.block_size)
    for name, packed in (("train", train), ("validation", validation)):
        if packed.blocks == 0:
            raise ValueError(
                f"The {name} split has {packed.tokens_total} tokens, fewer than one block of "
                f"block_size={config.block_size}: lower block_size or add documents"
            )
    train_dataset = train.dataset.with_format("torch")  # tensors: the collator only stacks them
    eval_dataset = validation.dataset.with_format("torch")
    if config.max_eval_blocks and len(eval_dataset) > config.max_eval_blocks:
        eval_dataset = eval_dataset.select(range(config.max_eval_blocks))

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    schedule = effective_schedule(config, plan, train.blocks, world_size)
    data_fingerprint = train.fingerprint()
    run_key = {
        "config_hash": config.config_hash(),
        "data_fingerprint": data_fingerprint,
        "base_model": str(base_model_dir.resolve()),
        "base_model_files": base_model_identity(base_model_dir),
        "device": plan.device,
        "method": plan.method,
    }
    if init_adapter_dir is not None:  # issue #10: a continued run resumes only onto the same parent
        run_key["init_adapter"] = adapter_identity(Path(init_adapter_dir))
    resume: ResumePlan = plan_resume(checkpoints_dir, run_key)
    log.info("Checkpoints: %s", resume.reason)

    set_seed(config.seed)
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = _load_model(base_model_dir, config, plan, init_adapter_dir=init_adapter_dir)
    if config.gradient_checkpointing and plan.method == "lora":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable, total = model.get_nb_trainable_parameters()
    embeddings_before = _embedding_snapshot(model) if config.train_embeddings else {}

    if plan.device == "cpu":
        optim = "adamw_torch"
    elif plan.method == "qlora":
        optim = "paged_adamw_8bit"
    else:
        optim = "adamw_torch_fused"
    batch, accumulation = config.per_device_batch_size, schedule["gradient_accumulation_steps"]
    oom_retries: list[str] = []
    while True:  # one pass, unless CUDA runs out of memory: then the same global batch in smaller forward passes
        args = TrainingArguments(
            output_dir=str(checkpoints_dir),
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=config.eval_batch_size or config.per_device_batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler_type,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            num_train_epochs=config.num_epochs,
            max_steps=schedule["max_steps_arg"],
            logging_steps=config.logging_steps,
            eval_strategy="steps",
            eval_steps=config.eval_steps,
            eval_on_start=resume.checkpoint is None,  # a resumed run has the step-0 evaluation in its restored history
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=config.save_total_limit,
            seed=config.seed,
            data_seed=config.seed,
            use_cpu=plan.device == "cpu",
            bf16=plan.device == "cuda",
            optim=optim,
            torch_compile=plan.torch_compile,
            use_liger_kernel=plan.fused_cross_entropy,
            prediction_loss_only=True,
            remove_unused_columns=False,
            report_to="none",
            ddp_backend="gloo" if plan.device == "cpu" and world_size > 1 else None,
            disable_tqdm=True,
            dataloader_num_workers=0,
            # A last, smaller batch would make torch.compile build a second graph; at most batch-1 blocks are lost.
            dataloader_drop_last=plan.torch_compile,
        )
        trainer_class = _make_trainer_class()
        timer = _make_callback(progress_callback)
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=default_data_collator,
            callbacks=[timer],
        )
        if config.train_embeddings:
            trainer.embedding_learning_rate = config.embedding_learning_rate

        finished = _finished_state(resume.checkpoint)
        if finished is not None and resume.checkpoint is not None:
            # The checkpoint is the run's last step: the Trainer would take one more step past it, so load it instead.
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(trainer.model, _checkpoint_weights(resume.checkpoint))
            trainer.state = finished
            log.info("Checkpoint %s is the end of this run: nothing left to train", resume.checkpoint.name)
        else:
            try:
                trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume.checkpoint else None)
            except Exception as error:
                if plan.device != "cuda" or not is_out_of_memory(error):
                    raise
                smaller = smaller_batch(batch, accumulation)
                if smaller is None:
                    raise RuntimeError(
                        f"CUDA out of memory at per_device_batch_size={batch} (block_size={config.block_size}): "
                        "even one block per forward pass does not fit; lower block_size or use method='qlora'"
                    ) from error
                oom_retries.append(f"batch {batch} -> {smaller[0]}")
                log.warning("CUDA out of memory at per_device_batch_size=%d; retrying at %d", batch, smaller[0])
                batch, accumulation = smaller
                del trainer
                _free_cuda_memory()
                continue
        break
    state = trainer.state
    _, evals = _history(state.log_history)
    if not evals or evals[-1].step != state.global_step:
        trainer.evaluate()
    train_losses, eval_losses = _history(state.log_history)

    embeddings_changed = None
    if config.train_embeddings:
        after = _embedding_snapshot(trainer.model)
        embeddings_changed = bool(after) and any(not torch.equal(embeddings_before[k], after[k]) for k in after)
        if not embeddings_changed:
            log.warning("train_embeddings is on but embed_tokens/lm_head did not change (unsloth #9326 trap)")

    info_run = {"config": config.to_dict(), "run": run_key, "plan": asdict(plan)}
    if int(os.environ.get("RANK", "0")) == 0:
        with atomic_path(adapter_dir) as tmp:
            trainer.model.save_pretrained(str(tmp))  # pyright: ignore[reportOptionalMemberAccess, reportCallIssue]
            tokenizer.save_pretrained(str(tmp))
            (tmp / TRAINING_INFO_FILE).write_text(json.dumps(info_run, indent=2, default=str))

    steps_this_run = len(timer.step_seconds)
    train_seconds = sum(timer.step_seconds)
    tokens_per_step = batch * accumulation * world_size * config.block_size
    tokens_seen = min(state.global_step * tokens_per_step, int(train.tokens_packed * config.num_epochs))
    speedups = tuple(
        name
        for name, on in (("torch.compile", plan.torch_compile), ("liger fused cross-entropy", plan.fused_cross_entropy))
        if on
    )
    device_name, gpu_name = "cpu", ""
    if plan.device == "cuda":
        gpu_name = torch.cuda.get_device_name()
        device_name = f"cuda:{torch.cuda.current_device()} ({gpu_name})"
    result = TrainResult(
        adapter_dir=adapter_dir,
        device=device_name,
        method=plan.method,
        fallback_reason=plan.fallback_reason,
        precision={"qlora": "nf4 weights, bf16 compute"}.get(plan.method, "bf16" if plan.device == "cuda" else "fp32"),
        speedups=speedups,
        train_losses=train_losses,
        eval_losses=eval_losses,
        steps=state.global_step,
        steps_this_run=steps_this_run,
        planned_steps=schedule["planned_steps"],
        tokens_seen=tokens_seen,
        tokens_per_second=steps_this_run * tokens_per_step / train_seconds if train_seconds else 0.0,
        step_seconds=tuple(timer.step_seconds),
        trainable_parameters=int(trainable),
        total_parameters=int(total),
        peak_memory_bytes=peak_memory_bytes(plan.device),
        wall_seconds=time.perf_counter() - started,
        adapter_bytes=folder_bytes(adapter_dir) if adapter_dir.exists() else 0,
        resumed_from_checkpoint=resume.checkpoint.name if resume.checkpoint else "",
        resume_reason=resume.reason,
        train_blocks=train.blocks,
        validation_blocks=len(eval_dataset),
        block_size=config.block_size,
        tokens_dropped=train.tokens_dropped,
        config_hash=config.config_hash(),
        data_fingerprint=data_fingerprint,
        embeddings_changed=embeddings_changed,
        per_device_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        world_size=world_size,
        oom_retries=tuple(oom_retries),
        gpu_name=gpu_name,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        info = {**info_run, "result": result.to_dict()}
        with atomic_path(adapter_dir / TRAINING_INFO_FILE) as tmp:
            tmp.write_text(json.dumps(info, indent=2, default=str))
    log.info(
        "Trained %s on %s: %d steps, %.1f tokens/s, eval loss %s -> %s",
        plan.method,
        device_name,
        result.steps,
        result.tokens_per_second,
        result.base_eval_loss,
        result.final_eval_loss,
    )
    return result


def plot_losses(result: TrainResult, path: Path) -> Path:
    """Train and validation loss per step as a PNG (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    if result.train_losses:
        axis.plot([p.step for p in result.train_losses], [p.loss for p in result.train_losses], label="train", lw=1.2)
    if result.eval_losses:
        axis.plot(
            [p.step for p in result.eval_losses],
            [p.loss for p in result.eval_losses],
            "o-",
            label="validation",
            lw=1.5,
        )
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy loss")
    axis.set_title(f"{result.method} on {result.device}: {result.tokens_seen:,} tokens")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def loss_table(result: TrainResult) -> list[dict[str, float | int | None]]:
    """One row per step with a train and/or validation loss, for a metadata table."""
    rows: dict[int, dict[str, float | int | None]] = {}
    for point in result.train_losses:
        rows.setdefault(point.step, {"step": point.step, "train_loss": None, "validation_loss": None})
        rows[point.step]["train_loss"] = point.loss
    for point in result.eval_losses:
        rows.setdefault(point.step, {"step": point.step, "train_loss": None, "validation_loss": None})
        rows[point.step]["validation_loss"] = point.loss
    return [rows[step] for step in sorted(rows)]
