"""merged_model and gguf_model: the adapter folded into the base, then GGUF files llama.cpp and Ollama run.

Each GGUF is loaded back in llama.cpp and compared with the merged HF model before anyone calls it good: a wrong
pre-tokenizer or chat template gives a file that loads but babbles (llama.cpp #9927, #4023).
"""

import json
from dataclasses import asdict
from pathlib import Path

import dagster as dg

from cpt_assets.defs.automation import follow
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.export.checks import GGUF_CHECKS, MERGE_CHECKS, gguf_results, merge_results
from cpt_assets.defs.metadata import megabytes, numbers, short_hash, sig, table, text
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.base_model import describe_model_dir, exported_source
from cpt_assets.lib.evaluation import adapter_weights_sha256
from cpt_assets.lib.gguf_export import (
    VERIFICATION_FILE,
    GGUFExportConfig,
    Provenance,
    export_gguf,
    toolchain_versions,
)
from cpt_assets.lib.gguf_fidelity import png_markdown
from cpt_assets.lib.lake import (
    ADAPTER_CONFIG_FILE,
    SPLIT_NAMES,
    TRAINING_INFO_FILE,
    Lake,
    content_version,
    read_scored_blocks,
    read_split,
    sha256_file,
)
from cpt_assets.lib.merge import merge_adapter
from cpt_assets.lib.splits import split_content_hash


class GGUFRunConfig(config_class(GGUFExportConfig, "GGUFRunConfigBase")):
    """GGUFExportConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


# Metadata tables show in a value column about 380 px wide (Dagster 1.13, 1440 px window): a few short columns.
FILE_COLUMNS = ["type", "mb", "bits_per_weight", "sha256"]
# Five short columns fit the metadata column; every figure is in verification.json.
FIDELITY_COLUMNS = ["type", "tokens", "ppl", "drift_pct", "same_text"]
KLD_COLUMNS = ["type", "imatrix", "mean_kld", "p99_kld", "top_pct"]


@dg.asset(
    automation_condition=follow(),  # issue #10: follows lora_adapter
    deps=[lora_adapter, base_model],
    group_name="export",
    kinds={"peft", "safetensors"},
    check_specs=MERGE_CHECKS,
    description="The LoRA adapter merged into the base model (peft merge_and_unload), saved as safetensors + "
    "tokenizer under data_lake/models/merged. An adapter trained on another base fails before anything is written.",
)
def merged_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    version = content_version(adapter_weights_sha256(lk.adapter_dir), sha256_file(lk.base_model_dir / "config.json"))
    result = merge_adapter(lk.base_model_dir, lk.adapter_dir, lk.version_dir("merged", version))
    lk.publish_latest("merged", version)
    context.log.info(f"merged {result.lora_modules} LoRA modules; {result.changed_tensors} tensors changed")
    return dg.MaterializeResult(
        metadata={
            **numbers(
                {
                    "lora_modules": result.lora_modules,
                    "changed_tensors": result.changed_tensors,
                    "max_abs_delta": float(result.max_abs_delta),
                    "parameters": result.parameters,
                    "changed_parameters_share": result.changed_share,
                    "weights_mb": megabytes(result.weights_bytes),
                    "seconds": result.seconds,
                }
            ),
            "weight_change_by_module": table(
                result.change_table(),
                ["module", "changed_tensors", "changed_pct", "relative_change"],
            ),
            "weights_sha256": short_hash(result.weights_sha256),
            "adapter_config_sha256": short_hash(result.adapter_config_sha256),
            "path": dg.MetadataValue.path(str(result.path)),
        },
        data_version=dg.DataVersion(result.weights_sha256[:16]),
        check_results=merge_results(result),
    )


def export_provenance(lake: Lake, run_id: str) -> Provenance:
    """Everything a GGUF found on a disk needs to be traced back to this run."""
    source = exported_source(lake.base_model_dir) or lake.base_model_dir.name
    training = json.loads((lake.adapter_dir / TRAINING_INFO_FILE).read_text())
    return Provenance(
        name="cpt-" + Path(source).name,
        base_model_name=source,
        base_model_sha256=describe_model_dir(lake.base_model_dir, source).weights_sha256,
        adapter_config_sha256=sha256_file(lake.adapter_dir / ADAPTER_CONFIG_FILE),
        training_config_sha256=str(training.get("result", {}).get("config_hash", "")),
        merged_model_sha256=describe_model_dir(lake.merged_model_dir, source).weights_sha256,
        split_sha256={name: split_content_hash(read_split(lake, name)) for name in SPLIT_NAMES},  # = corpus_splits
        run_id=run_id,
    )


@dg.asset(
    automation_condition=follow(),  # issue #10: follows lora_adapter
    deps=[merged_model, corpus_splits, base_model, lora_adapter, "eval_report"],  # provenance reads base + adapter
    group_name="export",
    kinds={"gguf", "llama.cpp", "ollama"},
    check_specs=GGUF_CHECKS,
    description="F16 GGUF made by llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist), with our "
    "provenance added as KV metadata; candidate types quantized by llama-quantize with and without a domain importance "
    "matrix (llama-imatrix on the train split) and measured against F16 by llama-perplexity --kl-divergence on the "
    "test split; the Modelfile points at the smallest file within the KLD bound. F16 and that file are compared with "
    "the merged model (tokenization, perplexity, greedy completions). Under data_lake/gguf/.",
)
def gguf_model(context: dg.AssetExecutionContext, config: GGUFRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    export_config = to_dataclass(config, GGUFExportConfig)
    texts = [chunk.text for chunk in read_split(lk, "test")] or [chunk.text for chunk in read_split(lk, "validation")]
    scored = read_scored_blocks(lk.eval_scores_path)  # eval_report's blocks and NLL: one HF test perplexity
    if scored is not None and scored.adapter_sha256 != adapter_weights_sha256(lk.adapter_dir):
        context.log.warning(f"{lk.eval_scores_path} scored another adapter; HF perplexity is computed here")
        scored = None
    provenance = export_provenance(lk, context.run_id)
    version = content_version(
        provenance.merged_model_sha256, asdict(export_config), scored.adapter_sha256 if scored else None
    )
    out_dir = lk.version_dir("gguf", version)
    train = [chunk.text for chunk in read_split(lk, "train")]  # the domain importance matrix's text
    export = export_gguf(
        lk.merged_model_dir, out_dir, provenance, texts, export_config, train_texts=train, scored=scored
    )
    lk.publish_latest("gguf", version)
    chosen_rows = export.chosen_rows()  # the rows the KLD check judged
    completions = [
        {"type": f.file_type, "prompt": c.prompt, "hf": c.hf, "gguf": c.gguf, "identical": c.identical}
        for f in export.fidelity
        for c in f.completions
    ]
    target = export.file(export.chosen_type)
    rows = export.table()
    fidelity_rows = [
        {
            "type": f.file_type,
            "tokens": "equal" if f.tokenization_equal else f"differ: {f.first_mismatch}",
            "ppl": f.gguf_perplexity if f.loaded else None,
            "drift_pct": 100 * f.relative_drift if f.loaded else None,
            "same_text": f"{f.identical_completions}/{len(f.completions)}",
        }
        for f in export.fidelity
    ]
    kld_rows = [
        {
            "type": row.file_type,
            "imatrix": row.imatrix,
            "mean_kld": row.mean_kld,
            "p99_kld": row.p99_kld,
            "top_pct": 100 * row.same_top_share,
        }
        for row in export.quant_fidelity
    ]
    metadata = {
        "hf_perplexity": sig(export.hf_perplexity),
        "hf_perplexity_from": "eval_report (same blocks)" if scored is not None else "computed here (no eval scores)",
        "chosen_type": export.chosen_type,
        "choice_reason": export.choice_reason,
        "kld_table": table(
            kld_rows,
            KLD_COLUMNS,
            digits=3,
            descriptions={"mean_kld": "mean KL divergence from F16", "top_pct": "same top token as F16, %"},
        ),
        "size_vs_kld": dg.MetadataValue.md(png_markdown(export.plot.read_bytes()) if export.plot else "_no plot_"),
        "files": table([r | {"sha256": short_hash(str(r["sha256"]))} for r in rows], FILE_COLUMNS),
        "fidelity": table(
            fidelity_rows,
            FIDELITY_COLUMNS,
            chars=16,
            descriptions={
                "tokens": "llama.cpp's tokens of the test texts vs the HF tokenizer's",
                "ppl": "GGUF perplexity on eval_report's blocks",
                "drift_pct": "GGUF vs HF perplexity on those blocks, %",
                "same_text": "greedy completions identical to the HF model's",
            },
        ),
        "completions": dg.MetadataValue.json(completions),  # too wide for a table: opens in its own dialog
        "provenance": dg.MetadataValue.json(export.provenance),  # the file's KV metadata, verbatim
        "toolchain": text(toolchain_versions()),
        "modelfile": dg.MetadataValue.md(f"```\n{export.modelfile.read_text()}\n```"),
        "gguf_path": dg.MetadataValue.path(str(target.path)),
        "verification": dg.MetadataValue.path(str(out_dir / VERIFICATION_FILE)),
        "version": version,
    }
    for row in chosen_rows:
        metadata |= {"mean_kld": row.mean_kld, "p99_kld": row.p99_kld, "same_top_share": row.same_top_share}
    if export.imatrix:
        metadata |= {"imatrix_sha256": export.imatrix.sha256, "imatrix_chunks": export.imatrix.chunks}
    for gguf_file in export.files:
        prefix = gguf_file.file_type.lower()
        metadata |= numbers(
            {
                f"{prefix}_mb": megabytes(gguf_file.bytes),
                f"{prefix}_bits_per_weight": gguf_file.bits_per_weight,
                f"{prefix}_seconds": gguf_file.seconds,
            }
        )
        metadata[f"{prefix}_sha256"] = short_hash(gguf_file.sha256)
    for fidelity in export.fidelity:
        if fidelity.loaded:
            prefix = fidelity.file_type.lower()
            metadata |= numbers(
                {f"{prefix}_perplexity": fidelity.gguf_perplexity, f"{prefix}_drift_pct": 100 * fidelity.relative_drift}
            )
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(target.sha256[:16]),
        check_results=gguf_results(export, export_config),
    )
