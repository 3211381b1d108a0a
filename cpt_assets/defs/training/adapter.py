"""The lora_adapter asset: continual pretraining on the train split, validated on the validation split.

It runs in the "gpu" pool (dagster.yaml limits the pool), so two training steps never share an accelerator while
corpus steps run in parallel; the pool sits on the asset itself, so it also holds when a user materialises from the
UI rather than through a job (dagster #33430).
"""

import json
from collections import defaultdict

import dagster as dg

from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.metadata import check_result, megabytes, numbers, png_markdown, short_hash, sig, table, text
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.lake import Lake, read_split
from cpt_assets.lib.launch import process_count, train_adapter_launched
from cpt_assets.lib.training import TrainingConfig, loss_table, mfu, plot_losses, resolve_plan, train_adapter

TrainingRunConfig = config_class(TrainingConfig, "TrainingRunConfig")


def split_texts(lake: Lake, split: str) -> dict[str, list[str]]:
    """doc_id -> chunk texts in document order, from a split's parquet file."""
    texts: dict[str, list[str]] = defaultdict(list)
    for chunk in sorted(read_split(lake, split), key=lambda c: (c.doc_id, c.chunk_index)):
        texts[chunk.doc_id].append(chunk.text)
    return dict(texts)


@dg.asset(
    deps=[corpus_splits, base_model],
    group_name="model",
    kinds={"pytorch", "peft"},
    pool="gpu",
    tags={"pool": "gpu"},  # the pool, visible on the asset page (pool= alone shows only in compute details)
    # The device is decided when the step runs (the webserver and the worker may be different machines); the run
    # gets a `cpt/device` tag then. This static tag only says that the step wants an accelerator.
    op_tags={"cpt/accelerator": "gpu"},
    check_specs=[
        dg.AssetCheckSpec(
            "validation_loss_below_base",
            asset="lora_adapter",
            description="the adapter's final validation loss is below the base model's (evaluation at step 0)",
        )
    ],
    description="LoRA adapter continually pretrained on the train split (fp32 LoRA on CPU with a token budget; "
    "bf16 LoRA, QLoRA or unsloth on CUDA). Killed runs resume from the newest checkpoint in data_lake/models/"
    "checkpoints when materialised again with the same config and data.",
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: TrainingRunConfig, lake: LakeResource
) -> dg.MaterializeResult:
    training_config = to_dataclass(config, TrainingConfig)
    lk = lake.lake()
    if not lk.split_path("train").exists():
        raise FileNotFoundError(f"no train split at {lk.split_path('train')}: materialise corpus_splits first")

    def progress(line: dict) -> None:
        context.log.info(json.dumps({k: v for k, v in line.items() if isinstance(v, (int, float, str))}))

    plan = resolve_plan(training_config)  # fails here, naming the setting, on device=cuda without CUDA
    processes = process_count(training_config, plan.device)
    context.instance.add_run_tags(context.run_id, {"cpt/device": plan.device, "cpt/processes": str(processes)})
    args = (
        lk.base_model_dir,
        split_texts(lk, "train"),
        split_texts(lk, "validation"),
        training_config,
        lk.adapter_dir,
        lk.checkpoints_dir,
    )
    if processes > 1:
        context.log.info(f"training with {processes} processes (torchrun, DDP)")
        result = train_adapter_launched(processes, *args, progress_callback=progress)
    else:
        result = train_adapter(*args, progress_callback=progress)
    utilisation = mfu(result.tokens_per_second, result.total_parameters, result.gpu_name, result.world_size)
    chart = plot_losses(result, lk.training_chart_path)
    base_loss, final_loss = result.base_eval_loss, result.final_eval_loss
    lowered = bool(base_loss is not None and final_loss is not None and final_loss < base_loss)
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
            "validation_loss_lowered": lowered,
            "resumed_from_checkpoint": text(result.resumed_from_checkpoint, missing="no (fresh start)"),
            "resume_reason": text(result.resume_reason),
            "config_hash": result.config_hash,
            "data_fingerprint": short_hash(result.data_fingerprint),
            "loss_chart": png_markdown(chart, "train and validation loss"),
            "losses": table(loss_table(result), ["step", "train_loss", "validation_loss"]),
            "adapter_path": dg.MetadataValue.path(str(result.adapter_dir)),
        },
        data_version=dg.DataVersion(f"{result.config_hash}-{result.data_fingerprint[:8]}"),
        check_results=[
            check_result(
                "validation_loss_below_base",
                lowered,
                f"validation loss {sig(base_loss)} (base) -> {sig(final_loss)} (adapted) after {result.steps} steps",
                metadata={"validation_loss_base": base_loss, "validation_loss_final": final_loss},
                severity=dg.AssetCheckSeverity.WARN,
            )
        ],
    )
