"""merged_model and gguf_model: the adapter folded into the base, then GGUF files llama.cpp and Ollama run.

Each GGUF is loaded back in llama.cpp and compared with the merged HF model before anyone calls it good: a wrong
pre-tokenizer or chat template gives a file that loads but babbles (llama.cpp #9927, #4023).
"""

import json
from pathlib import Path

import dagster as dg

from cpt_assets.defs.automation import follow
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.metadata import table_value
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.base_model import describe_model_dir, exported_source
from cpt_assets.lib.gguf_export import (
    VERIFICATION_FILE,
    GGUFExportConfig,
    Provenance,
    export_gguf,
    toolchain_versions,
)
from cpt_assets.lib.gguf_verify import gguf_loads, perplexity_within, tokenization_matches
from cpt_assets.lib.lake import SPLIT_NAMES, Lake, read_split, sha256_file
from cpt_assets.lib.merge import merge_adapter
from cpt_assets.lib.splits import split_content_hash
from cpt_assets.lib.training import TRAINING_INFO_FILE

GGUFRunConfig = config_class(GGUFExportConfig, "GGUFRunConfig")
GGUF_CHECKS = ("gguf_loads_in_llama_cpp", "gguf_tokenization_matches_hf", "gguf_perplexity_within_bound")


@dg.asset(
    automation_condition=follow(),  # issue #10: follows lora_adapter
    deps=[lora_adapter, base_model],
    group_name="export",
    kinds={"peft", "safetensors"},
    check_specs=[dg.AssetCheckSpec("merge_changed_weights", asset="merged_model")],
    description="The LoRA adapter merged into the base model (peft merge_and_unload), saved as safetensors + "
    "tokenizer under data_lake/models/merged. An adapter trained on another base fails before anything is written.",
)
def merged_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    result = merge_adapter(lk.base_model_dir, lk.adapter_dir, lk.merged_model_dir)
    context.log.info(f"merged {result.lora_modules} LoRA modules; {result.changed_tensors} tensors changed")
    return dg.MaterializeResult(
        metadata={
            "lora_modules": result.lora_modules,
            "changed_tensors": result.changed_tensors,
            "max_abs_delta": float(result.max_abs_delta),
            "parameters": result.parameters,
            "changed_parameters_share": round(result.changed_share, 5),
            "weight_change_by_module": table_value(
                result.change_table(),
                [
                    "module",
                    "tensors",
                    "changed_tensors",
                    "parameters",
                    "changed_pct",
                    "max_abs_delta",
                    "relative_change",
                ],
            ),
            "weights_bytes": dg.MetadataValue.int(result.weights_bytes),
            "weights_sha256": result.weights_sha256,
            "adapter_config_sha256": result.adapter_config_sha256,
            "seconds": round(result.seconds, 1),
            "path": dg.MetadataValue.path(str(result.path)),
        },
        data_version=dg.DataVersion(result.weights_sha256[:16]),
        check_results=[
            dg.AssetCheckResult(
                check_name="merge_changed_weights",
                passed=result.changed_tensors > 0,
                description=f"{result.changed_tensors} base tensors changed by the merge (max |delta| "
                f"{result.max_abs_delta:.3g})",
            )
        ],
    )


def export_provenance(lake: Lake, run_id: str) -> Provenance:
    """Everything a GGUF found on a disk needs to be traced back to this run."""
    source = exported_source(lake.base_model_dir) or lake.base_model_dir.name
    training = json.loads((lake.adapter_dir / TRAINING_INFO_FILE).read_text())
    return Provenance(
        name="cpt-" + Path(source).name,
        base_model_name=source,
        base_model_sha256=describe_model_dir(lake.base_model_dir, source).weights_sha256,
        adapter_config_sha256=sha256_file(lake.adapter_dir / "adapter_config.json"),
        training_config_sha256=str(training.get("result", {}).get("config_hash", "")),
        merged_model_sha256=describe_model_dir(lake.merged_model_dir, source).weights_sha256,
        split_sha256={name: split_content_hash(read_split(lake, name)) for name in SPLIT_NAMES},  # = corpus_splits
        run_id=run_id,
    )


@dg.asset(
    automation_condition=follow(),  # issue #10: follows lora_adapter
    deps=[merged_model, corpus_splits],
    group_name="export",
    kinds={"gguf", "llama.cpp", "ollama"},
    check_specs=[dg.AssetCheckSpec(name, asset="gguf_model") for name in GGUF_CHECKS],
    description="F16 GGUF written with the gguf package and quantized by llama.cpp (Q4_K_M by default), each loaded "
    "back in llama.cpp and compared with the merged model (tokenization, perplexity, greedy completions); "
    "provenance inside the file as KV metadata; an Ollama Modelfile beside it, under data_lake/gguf/.",
)
def gguf_model(context: dg.AssetExecutionContext, config: GGUFRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    export_config = to_dataclass(config, GGUFExportConfig)
    texts = [chunk.text for chunk in read_split(lk, "test")] or [chunk.text for chunk in read_split(lk, "validation")]
    export = export_gguf(lk.merged_model_dir, lk.gguf_dir, export_provenance(lk, context.run_id), texts, export_config)

    checks = []
    for name, outcomes in (
        ("gguf_loads_in_llama_cpp", [gguf_loads(f) for f in export.fidelity]),
        ("gguf_tokenization_matches_hf", [tokenization_matches(f) for f in export.fidelity]),
        (
            "gguf_perplexity_within_bound",
            [perplexity_within(f, export_config.tolerance_for(f.file_type)) for f in export.fidelity],
        ),
    ):
        checks.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=all(passed for passed, _ in outcomes),
                description="; ".join(text for _, text in outcomes),
            )
        )
    completions = [
        {"file": f.file_type, "prompt": c.prompt[:80], "hf": c.hf[:200], "gguf": c.gguf[:200], "identical": c.identical}
        for f in export.fidelity
        for c in f.completions
    ]
    target = export.file(
        export_config.modelfile_type or (export_config.quantizations[0] if export_config.quantizations else "F16")
    )
    metadata = {
        "fidelity": dg.MetadataValue.md(export.markdown()),
        "files": table_value(export.table(), list(export.table()[0])),
        "completions": table_value(completions, ["file", "prompt", "hf", "gguf", "identical"]),
        "hf_perplexity": round(export.hf_perplexity, 4),
        "provenance": dg.MetadataValue.json(export.provenance),
        "toolchain": dg.MetadataValue.json(toolchain_versions()),
        "modelfile": dg.MetadataValue.md(f"```\n{export.modelfile.read_text()}\n```"),
        "gguf_path": dg.MetadataValue.path(str(target.path)),
        "verification": dg.MetadataValue.path(str(lk.gguf_dir / VERIFICATION_FILE)),
    }
    for gguf_file in export.files:
        prefix = gguf_file.file_type.lower()
        metadata[f"{prefix}_bytes"] = dg.MetadataValue.int(gguf_file.bytes)
        metadata[f"{prefix}_bits_per_weight"] = round(gguf_file.bits_per_weight, 3)
        metadata[f"{prefix}_sha256"] = gguf_file.sha256
        metadata[f"{prefix}_seconds"] = round(gguf_file.seconds, 2)
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(target.sha256[:16]), check_results=checks
    )
