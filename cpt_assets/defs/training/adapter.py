"""The lora_adapter asset: continual pretraining on the train split, validated on the validation split.

It runs in the "gpu" pool (dagster.yaml limits the pool), so two training steps never share an accelerator while
corpus steps run in parallel; the pool sits on the asset itself, so it also holds when a user materialises from the
UI rather than through a job (dagster #33430).
"""

import json
from collections import defaultdict
from dataclasses import asdict, replace

import dagster as dg

from cpt_assets.defs.automation import MODEL_AUTOMATION, TRAIN_AUTOMATION
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.metadata import (
    megabytes,
    numbers,
    png_markdown,
    short_hash,
    table,
    text,
)
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.base import base_model
from cpt_assets.defs.training.checks import ADAPTER_CHECKS, adapter_results
from cpt_assets.lib.base_model import describe_model_dir
from cpt_assets.lib.continual import ContinualConfig, prepare_training
from cpt_assets.lib.control_text import read_control_documents, texts_of
from cpt_assets.lib.lake import CONTINUAL_FILE, Lake, atomic_path, content_version, read_split
from cpt_assets.lib.launch import process_count, train_adapter_launched
from cpt_assets.lib.registry import promoted_version, read_versions
from cpt_assets.lib.training import TrainingConfig, loss_table, mfu, plot_losses, resolve_plan, train_adapter

TrainingRunConfig = config_class(TrainingConfig, "TrainingRunConfig")
ContinualRunConfig = config_class(ContinualConfig, "ContinualRunConfig")


class AdapterRunConfig(TrainingRunConfig, ContinualRunConfig):  # type: ignore[misc, valid-type]
    """Training settings plus replay and continuation settings (ContinualConfig)."""


def continual_inputs(lk: Lake, training_config: TrainingConfig, continual: ContinualConfig):
    """Parent version and replay mix of this run (lib.continual decides; this reads the lake)."""
    continual.validate()
    if not lk.control_text_path.exists():
        raise FileNotFoundError(
            f"no general-text control set at {lk.control_text_path}: materialise control_text first "
            "(ContinualConfig.general_replay_share needs its replay part)"
        )
    general = texts_of(read_control_documents(lk), "replay")
    promoted = promoted_version(read_versions(lk))
    parent = None
    if promoted:
        parent = (promoted.version, lk.registry_adapter_dir(promoted.version), promoted.base_sha256)
    shape = {
        "r": training_config.lora_r,
        "lora_alpha": training_config.lora_alpha,
        "use_rslora": training_config.use_rslora,
        "target_modules": list(training_config.target_modules),
    }
    base_sha = describe_model_dir(lk.base_model_dir, "").weights_sha256
    return prepare_training(split_texts(lk, "train"), general, parent, base_sha, shape, continual)


def split_texts(lake: Lake, split: str) -> dict[str, list[str]]:
    """doc_id -> chunk texts in document order, from a split's parquet file."""
    texts: dict[str, list[str]] = defaultdict(list)
    for chunk in sorted(read_split(lake, split), key=lambda c: (c.doc_id, c.chunk_index)):
        texts[chunk.doc_id].append(chunk.text)
    return dict(texts)


@dg.asset(
    deps=[corpus_splits, base_model, control_text],
    group_name="model",
    kinds={"pytorch", "peft"},
    pool="gpu",
    tags={"pool": "gpu"},  # the pool, visible on the asset page (pool= alone shows only in compute details)
    automation_condition=TRAIN_AUTOMATION if MODEL_AUTOMATION else None,
    # The device is decided when the step runs (the webserver and the worker may be different machines); the run
    # gets a `cpt/device` tag then. This static tag only says that the step wants an accelerator.
    op_tags={"cpt/accelerator": "gpu"},
    check_specs=ADAPTER_CHECKS,
    description="LoRA adapter continually pretrained on the train split (fp32 LoRA on CPU with a token budget; "
    "bf16 LoRA, QLoRA or unsloth on CUDA). Killed runs resume from the newest checkpoint in data_lake/models/"
    "checkpoints when materialised again with the same config and data.",
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: AdapterRunConfig, lake: LakeResource
) -> dg.MaterializeResult:
    training_config = to_dataclass(config, TrainingConfig)
    continual = to_dataclass(config, ContinualConfig)
    lk = lake.lake()
    if not lk.split_path("train").exists():
        raise FileNotFoundError(f"no train split at {lk.split_path('train')}: materialise corpus_splits first")
    inputs = continual_inputs(lk, training_config, continual)
    context.log.info(f"start: {inputs.plan.reason}; mix {inputs.mix.tokens}")
    if inputs.plan.parent_version:  # re-warm, then the schedule decays again (Ibrahim et al. 2024)
        training_config = replace(
            training_config, warmup_steps=max(training_config.warmup_steps, continual.rewarm_steps)
        )

    def progress(line: dict) -> None:
        context.log.info(json.dumps({k: v for k, v in line.items() if isinstance(v, (int, float, str))}))

    plan = resolve_plan(training_config)  # fails here, naming the setting, on device=cuda without CUDA
    processes = process_count(training_config, plan.device)
    context.instance.add_run_tags(context.run_id, {"cpt/device": plan.device, "cpt/processes": str(processes)})
    validation = split_texts(lk, "validation")
    # One folder per config and data (the same inputs give the same folder), so this materialisation's
    # adapter_path stays true after later runs; models/adapter/latest points at the newest.
    version = content_version(asdict(training_config), inputs.record(), inputs.mix.documents, validation)
    out_dir = lk.version_dir("adapter", version)
    args = (lk.base_model_dir, inputs.mix.documents, validation, training_config, out_dir, lk.checkpoints_dir)
    init = {"init_adapter_dir": inputs.plan.parent_adapter_dir}  # continuing from the promoted version, or None
    if processes > 1:
        context.log.info(f"training with {processes} processes (torchrun, DDP)")
        result = train_adapter_launched(processes, *args, progress_callback=progress, **init)
    else:
        result = train_adapter(*args, progress_callback=progress, **init)
    with atomic_path(out_dir / CONTINUAL_FILE) as tmp:
        tmp.write_text(json.dumps(inputs.record(), indent=2))
    lk.publish_latest("adapter", version)
    utilisation = mfu(result.tokens_per_second, result.total_parameters, result.gpu_name, result.world_size)
    chart = plot_losses(result, lk.training_chart_path)
    base_loss, final_loss = result.base_eval_loss, result.final_eval_loss
    checks = adapter_results(base_loss, final_loss, result.steps)  # one decision: the check and the metadata
    return dg.MaterializeResult(
        metadata={
            "device": result.device,
            "gpu_name": text(result.gpu_name),
            "oom_retries": text(list(result.oom_retries)),
            "mfu_flop_count": "4N per token (LoRA over a frozen base) against the bf16 datasheet peak",
            "method": result.method,
            "fallback_reason": text(result.fallback_reason),
            "precision": result.precision,
            "speedups": text(list(result.speedups)),
            **numbers(
                {
                    "steps": result.steps,
                    "processes": result.world_size,
                    "per_device_batch_size": result.per_device_batch_size,
                    "gradient_accumulation_steps": result.gradient_accumulation_steps,
                    "learning_rate": result.learning_rate,
                    "mfu_4n": utilisation,
                    "steps_this_run": result.steps_this_run,
                    "tokens_seen": result.tokens_seen,
                    "tokens_per_second": result.tokens_per_second,
                    "validation_loss_base": base_loss,
                    "validation_loss_final": final_loss,
                    "trainable_parameters": result.trainable_parameters,
                    "trainable_share": result.trainable_share,
                    "total_parameters": result.total_parameters,
                    "peak_memory_mb": megabytes(result.peak_memory_bytes),
                    "wall_seconds": result.wall_seconds,
                    "adapter_mb": megabytes(result.adapter_bytes),
                    "train_blocks": result.train_blocks,
                    "validation_blocks": result.validation_blocks,
                    "block_size": result.block_size,
                }
            ),
            "validation_loss_lowered": checks[0].passed,
            "resumed_from_checkpoint": text(result.resumed_from_checkpoint, missing="no (fresh start)"),
            "resume_reason": text(result.resume_reason),
            "config_hash": result.config_hash,
            "data_fingerprint": short_hash(result.data_fingerprint),
            "loss_chart": png_markdown(chart, "train and validation loss"),
            "losses": table(loss_table(result), ["step", "train_loss", "validation_loss"]),
            "adapter_path": dg.MetadataValue.path(str(result.adapter_dir)),
            "version": version,
            "parent_version": inputs.plan.parent_version or "none",
            "start_reason": inputs.plan.reason,
            "replay_mix": table(inputs.mix.table(), ["part", "documents", "tokens", "share"]),
            **{f"tokens_{part}": tokens for part, tokens in inputs.mix.tokens.items()},
        },
        data_version=dg.DataVersion(f"{result.config_hash}-{result.data_fingerprint[:8]}"),
        check_results=checks,
    )
