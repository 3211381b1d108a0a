"""The evaluation area's asset check: its spec and its result from `lib.model_checks`."""

import dagster as dg

from cpt_assets.defs.metadata import outcome_result
from cpt_assets.lib.evaluation import EvalReport
from cpt_assets.lib.model_checks import adapted_perplexity_lowered

EVAL_CHECKS = [
    dg.AssetCheckSpec(
        "adapted_perplexity_below_base",
        asset="eval_report",
        description="the adapted model's test perplexity is below the base model's",
    )
]


def eval_results(report: EvalReport) -> list[dg.AssetCheckResult]:
    return [outcome_result("adapted_perplexity_below_base", adapted_perplexity_lowered(report))]
