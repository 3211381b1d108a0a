"""The eval_report asset: base vs adapted model on the test split, with a red light when training made it worse."""

from dataclasses import asdict

import dagster as dg

from cpt_assets.defs.automation import follow
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.evaluation.checks import EVAL_CHECKS, eval_results
from cpt_assets.defs.metadata import numbers, png_markdown, sig, table, timings_table
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.control_text import read_control_documents
from cpt_assets.lib.evaluation import (
    EvalConfig,
    adapter_weights_sha256,
    evaluate_models,
    metric_rows,
    rich_table,
    write_report,
)
from cpt_assets.lib.lake import content_version, read_split
from cpt_assets.lib.splits import split_content_hash


class EvalRunConfig(config_class(EvalConfig, "EvalRunConfigBase")):
    """EvalConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


# Metadata tables show in a value column about 380 px wide (Dagster 1.13, 1440 px window): a few short columns.
PER_SOURCE_COLUMNS = ["source", "tokens", "base", "adapted", "change_pct"]


def metrics_table(report) -> dg.MetadataValue:
    """The headline comparison, one row per metric (the eval table a user reads first)."""
    return table(
        [
            {
                "metric": row.name,
                "base": sig(row.base),
                "adapted": sig(row.adapted),
                "Δ%": sig(row.change_pct, 2),
            }
            for row in metric_rows(report)
        ],
        descriptions={
            "metric": "lower is better: loss and perplexities; higher is better: BLEU, ROUGE, similarity",
            "Δ%": "adapted vs base, % of base",
        },
    )


@dg.asset(
    automation_condition=follow(),  # issue #10: follows lora_adapter
    deps=[base_model, corpus_splits, lora_adapter, control_text],  # every asset it reads
    group_name="evaluation",
    kinds={"pytorch", "json"},
    pool="gpu",  # scores two models on the accelerator when there is one, like training
    op_tags={"cpt/accelerator": "gpu"},
    check_specs=EVAL_CHECKS,
    description="Base vs adapted on the test split: token-weighted loss and perplexity on packed blocks (overall and "
    "per source), general-text perplexity on control_text's held-out part (the forgetting control; model_version "
    "judges it), and BLEU / ROUGE / MiniLM similarity of greedy continuations. report.json, report.md, "
    "model_comparison.png and scores.json (the adapted model's scored blocks, which gguf_model's llama.cpp check "
    "scores again, so both show one HF test perplexity) under data_lake/eval/. Weight change is merged_model's.",
)
def eval_report(context: dg.AssetExecutionContext, config: EvalRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    lk = lake.lake()
    test_rows = read_split(lk, "test")
    if not test_rows:
        raise ValueError(f"the test split at {lk.split_path('test')} is missing or empty: materialise corpus_splits")
    eval_config = to_dataclass(config, EvalConfig)
    # The forgetting control: without control_text the report has no general-text row and says so.
    control = (
        [d.text for d in read_control_documents(lk) if d.part == "control"] if lk.control_text_path.exists() else []
    )
    if not control:
        context.log.warning(f"no general-text control set at {lk.control_text_path}: materialise control_text")
    version = content_version(
        adapter_weights_sha256(lk.adapter_dir),
        split_content_hash(test_rows),
        asdict(eval_config),
        content_version(control),
    )
    report = evaluate_models(lk.base_model_dir, lk.adapter_dir, test_rows, eval_config, control_texts=control)
    files = write_report(report, lk.version_dir("eval", version))  # this version's folder stays true
    lk.publish_latest("eval", version)
    context.log.info("\n" + rich_table(report))

    data = report.to_dict()
    return dg.MaterializeResult(
        metadata={
            **numbers(
                {
                    "base_perplexity": report.base.perplexity,
                    "adapted_perplexity": report.adapted.perplexity,
                    "base_loss": report.base.loss,
                    "adapted_loss": report.adapted.loss,
                    "base_bleu": report.base.bleu,
                    "adapted_bleu": report.adapted.bleu,
                    "base_embedding_similarity": report.base.embedding_similarity,
                    "adapted_embedding_similarity": report.adapted.embedding_similarity,
                    "test_documents": report.test_documents,
                    "test_chunks": report.test_rows,
                    "eval_blocks": report.eval_blocks,
                    "eval_tokens": report.eval_tokens,
                    "samples": len(report.samples),
                    "seconds": report.timings.get("total"),
                    **(
                        {
                            "control_base_perplexity": report.control.base_perplexity,
                            "control_adapted_perplexity": report.control.adapted_perplexity,
                            "control_change_pct": report.control.change_pct,
                            "control_tokens": report.control.tokens,
                        }
                        if report.control is not None
                        else {}
                    ),
                }
            ),
            "control_set": "control_text's held-out part"
            if report.control is not None
            else "none: materialise control_text",
            "device": report.device,
            "metrics": metrics_table(report),
            "model_comparison": png_markdown(files.chart_path, "base vs adapted"),
            "per_source_perplexity": table(
                [
                    {
                        "source": row["source"],
                        "tokens": row["tokens"],
                        "base": row["base_perplexity"],
                        "adapted": row["adapted_perplexity"],
                        "change_pct": row["change_pct"],
                    }
                    for row in data["per_source"]
                ],
                PER_SOURCE_COLUMNS,
                descriptions={"base": "base model perplexity", "adapted": "adapted model perplexity"},
            ),
            "seconds_by_phase": timings_table(report.timings),
            "report_json": dg.MetadataValue.path(str(files.json_path)),
            "report_md": dg.MetadataValue.path(str(files.markdown_path)),
            "scores_json": dg.MetadataValue.path(str(files.scores_path)),
            "version": version,
        },
        check_results=eval_results(report),
    )
