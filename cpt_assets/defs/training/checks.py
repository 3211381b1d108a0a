"""The training area's asset check: its spec and its result from `lib.model_checks`."""

import dagster as dg

from cpt_assets.defs.metadata import outcome_result
from cpt_assets.lib.model_checks import validation_loss_lowered

ADAPTER_CHECKS = [
    dg.AssetCheckSpec(
        "validation_loss_below_base",
        asset="lora_adapter",
        description="the adapter's final validation loss is below the base model's (evaluation at step 0)",
    )
]


def adapter_results(base_loss: float | None, final_loss: float | None, steps: int) -> list[dg.AssetCheckResult]:
    """A warning, not an error: a short CPU budget may end before the loss falls, and the adapter is still kept."""
    outcome = validation_loss_lowered(base_loss, final_loss, steps)
    return [outcome_result("validation_loss_below_base", outcome, severity=dg.AssetCheckSeverity.WARN)]
