"""Pure check functions behind the model asset checks (training, evaluation, export, registry).

Each returns a `CheckOutcome` (passed, description, details): the Dagster side (`cpt_assets/defs/*/checks.py`)
turns it into an asset check result and never decides anything itself. `lib.corpus_checks` is the corpus half.
"""

from __future__ import annotations

import math

from cpt_assets.lib.continual import GateDecision
from cpt_assets.lib.evaluation import EvalReport, perplexity_improved
from cpt_assets.lib.gguf_export import GGUFExport, GGUFExportConfig
from cpt_assets.lib.gguf_fidelity import kld_within
from cpt_assets.lib.gguf_verify import gguf_loads, perplexity_within, tokenization_matches
from cpt_assets.lib.types import CheckOutcome


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def validation_loss_lowered(base_loss: float | None, final_loss: float | None, steps: int) -> CheckOutcome:
    """The adapter's final validation loss is below the base model's (the evaluation at step 0).

    A loss that was not measured (no validation split) or is not finite fails: nothing shows the adapter learned.
    """
    passed = (
        base_loss is not None
        and final_loss is not None
        and math.isfinite(base_loss)
        and math.isfinite(final_loss)
        and final_loss < base_loss
    )
    description = f"validation loss {_figure(base_loss)} (base) -> {_figure(final_loss)} (adapted) after {steps} steps"
    return passed, description, {"validation_loss_base": base_loss, "validation_loss_final": final_loss}


def adapted_perplexity_lowered(report: EvalReport) -> CheckOutcome:
    """The adapted model's test perplexity is below the base model's (`evaluation.perplexity_improved`)."""
    passed, description = perplexity_improved(report)
    figures = {"base_perplexity": report.base.perplexity, "adapted_perplexity": report.adapted.perplexity}
    return passed, description, figures


def weights_changed(changed_tensors: int, max_abs_delta: float) -> CheckOutcome:
    """Merging the adapter changed at least one base tensor (an adapter that changes nothing is a fault)."""
    description = f"{changed_tensors} base tensors changed by the merge (max |delta| {max_abs_delta:.3g})"
    return changed_tensors > 0, description, {"changed_tensors": changed_tensors, "max_abs_delta": max_abs_delta}


def gguf_outcomes(export: GGUFExport, config: GGUFExportConfig) -> dict[str, CheckOutcome]:
    """The four GGUF checks of an export, by check name.

    Every file loads, tokenizes as HF does and stays within its file type's perplexity bound; the chosen
    quantization is within the KLD bounds (when no type was within them, the check fails with the choice's reason).
    """
    chosen = export.chosen_rows()
    parts = {
        "gguf_loads_in_llama_cpp": (
            [gguf_loads(f) for f in export.fidelity],
            {"files_loaded": sum(f.loaded for f in export.fidelity)},
        ),
        "gguf_tokenization_matches_hf": (
            [tokenization_matches(f) for f in export.fidelity],
            {"tokens_compared": sum(f.tokens_compared for f in export.fidelity)},
        ),
        "gguf_perplexity_within_bound": (
            [perplexity_within(f, config.tolerance_for(f.file_type)) for f in export.fidelity],
            {f"{f.file_type.lower()}_drift_pct": 100 * f.relative_drift for f in export.fidelity if f.loaded},
        ),
        "gguf_kld_within_bound": (
            [kld_within(row, config.max_mean_kld, config.max_p99_kld) for row in chosen]
            or [(False, export.choice_reason)],
            {key: getattr(row, key) for row in chosen for key in ("mean_kld", "p99_kld", "same_top_share")},
        ),
    }
    return {
        name: (bool(outcomes) and all(ok for ok, _ in outcomes), "; ".join(line for _, line in outcomes), figures)
        for name, (outcomes, figures) in parts.items()
    }


def gate_outcomes(decision: GateDecision, forgetting_bound: float, gguf_detail: str) -> dict[str, CheckOutcome]:
    """The promotion gate's three deciding checks, from `continual.promotion_decision`'s decision."""
    return {
        "candidate_beats_promoted": (decision.beats_promoted, decision.reason, {}),
        "candidate_within_forgetting_bound": (
            decision.within_forgetting_bound,
            f"general-text perplexity {decision.control_change:+.2%} vs base (bound {forgetting_bound:.0%})",
            {"control_change_pct": 100 * decision.control_change},
        ),
        "candidate_gguf_checks_pass": (decision.gguf_ok, gguf_detail, {}),
    }
