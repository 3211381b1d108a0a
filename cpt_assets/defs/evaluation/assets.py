"""The eval_report asset: base vs adapted model on the test split, with a red light when training made it worse."""

import math

import dagster as dg

from cpt_assets.defs.automation import follow
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.metadata import png_markdown, table_value
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.lib.evaluation import EvalConfig, evaluate_models, perplexity_improved, rich_table, write_report
from cpt_assets.lib.lake import read_split


def finite(value: float, digits: int) -> float | None:
    """Rounded, or None (shown as null) for a figure not computed, e.g. BLEU with max_samples=0."""
    return round(value, digits) if math.isfinite(value) else None


EvalRunConfig = config_class(EvalConfig, "EvalRunConfig")
PER_SOURCE_COLUMNS = ["source", "documents", "blocks", "tokens", "base_perplexity", "adapted_perplexity", "change_pct"]
WEIGHT_COLUMNS = ["module_type", "adapted", "parameters", "changed", "share_changed", "relative_frobenius"]


@dg.asset(
    automation_condition=follow(),  # issue #10: follows lora_adapter
    deps=[lora_adapter],
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
    "per source), BLEU / ROUGE / MiniLM similarity of greedy continuations, and the share of weights the adapter "
    "changes per module type. report.json, report.md and model_comparison.png under data_lake/eval/.",
)
def eval_report(context: dg.AssetExecutionContext, config: EvalRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    test_rows = read_split(lk, "test")
    if not test_rows:
        raise ValueError(f"the test split at {lk.split_path('test')} is missing or empty: materialise corpus_splits")
    report = evaluate_models(lk.base_model_dir, lk.adapter_dir, test_rows, to_dataclass(config, EvalConfig))
    files = write_report(report, lk.eval_dir)
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
            "share_of_parameters_changed": round(report.share_changed, 5),
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
            "weight_change": table_value(data["weight_changes"], WEIGHT_COLUMNS),
            "report_json": dg.MetadataValue.path(str(files.json_path)),
        },
        check_results=[
            dg.AssetCheckResult(check_name="adapted_perplexity_below_base", passed=passed, description=description)
        ],
    )
