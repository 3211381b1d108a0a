"""The eval_report asset: base vs adapted model on the test split, with a red light when training made it worse."""

import math
from dataclasses import asdict

import dagster as dg

from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.metadata import png_markdown, table_value
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.evaluation import (
    EvalConfig,
    adapter_weights_sha256,
    evaluate_models,
    perplexity_improved,
    rich_table,
    write_report,
)
from cpt_assets.lib.lake import content_version, read_split
from cpt_assets.lib.splits import split_content_hash


def finite(value: float, digits: int) -> float | None:
    """Rounded, or None (shown as null) for a figure not computed, e.g. BLEU with max_samples=0."""
    return round(value, digits) if math.isfinite(value) else None


class EvalRunConfig(config_class(EvalConfig, "EvalRunConfigBase")):
    """EvalConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


PER_SOURCE_COLUMNS = ["source", "documents", "blocks", "tokens", "base_perplexity", "adapted_perplexity", "change_pct"]


@dg.asset(
    deps=[base_model, corpus_splits, lora_adapter],  # every asset it reads
    group_name="evaluation",
    kinds={"pytorch", "json"},
    check_specs=[
        dg.AssetCheckSpec(
            "adapted_perplexity_below_base",
            asset="eval_report",
            description="the adapted model's test perplexity is below the base model's",
        )
    ],
    description="Base vs adapted on the test split: token-weighted loss and perplexity on packed blocks (overall and "
    "per source) and BLEU / ROUGE / MiniLM similarity of greedy continuations. report.json, report.md, "
    "model_comparison.png and scores.json (the adapted model's scored blocks, which gguf_model's llama.cpp check "
    "scores again, so both show one HF test perplexity) under data_lake/eval/. Weight change is merged_model's.",
)
def eval_report(context: dg.AssetExecutionContext, config: EvalRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    test_rows = read_split(lk, "test")
    if not test_rows:
        raise ValueError(f"the test split at {lk.split_path('test')} is missing or empty: materialise corpus_splits")
    eval_config = to_dataclass(config, EvalConfig)
    version = content_version(
        adapter_weights_sha256(lk.adapter_dir), split_content_hash(test_rows), asdict(eval_config)
    )
    report = evaluate_models(lk.base_model_dir, lk.adapter_dir, test_rows, eval_config)
    files = write_report(report, lk.version_dir("eval", version))  # this version's folder stays true
    lk.publish_latest("eval", version)
    context.log.info("\n" + rich_table(report))

    data = report.to_dict()
    passed, description = perplexity_improved(report)
    return dg.MaterializeResult(
        metadata={
            "base_perplexity": finite(report.base.perplexity, 4),
            "adapted_perplexity": finite(report.adapted.perplexity, 4),
            "base_loss": finite(report.base.loss, 4),
            "adapted_loss": finite(report.adapted.loss, 4),
            "base_bleu": finite(report.base.bleu, 3),
            "adapted_bleu": finite(report.adapted.bleu, 3),
            "base_embedding_similarity": finite(report.base.embedding_similarity, 4),
            "adapted_embedding_similarity": finite(report.adapted.embedding_similarity, 4),
            "test_documents": report.test_documents,
            "test_chunks": report.test_rows,
            "eval_blocks": report.eval_blocks,
            "eval_tokens": report.eval_tokens,
            "samples": len(report.samples),
            "device": report.device,
            "seconds": dg.MetadataValue.json(report.timings),
            "comparison": dg.MetadataValue.md(files.markdown),
            "model_comparison": png_markdown(files.chart_path, "base vs adapted"),
            "per_source_perplexity": table_value(data["per_source"], PER_SOURCE_COLUMNS),
            "report_json": dg.MetadataValue.path(str(files.json_path)),
            "scores_json": dg.MetadataValue.path(str(files.scores_path)),
            "version": version,
        },
        check_results=[
            dg.AssetCheckResult(check_name="adapted_perplexity_below_base", passed=passed, description=description)
        ],
    )
