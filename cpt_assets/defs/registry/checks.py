"""The registry area's asset checks: the promotion gate's blocking specs and results.

The outcomes come from `lib.model_checks`; the candidate's GGUF checks are read back from the instance (what
`candidate_gguf_checks_pass` judges).
"""

import dagster as dg

from cpt_assets.defs.export.checks import GGUF_CHECK_DESCRIPTIONS
from cpt_assets.defs.metadata import outcome_result
from cpt_assets.lib.continual import GateDecision
from cpt_assets.lib.model_checks import gate_outcomes

GATE_CHECK_DESCRIPTIONS = {
    "candidate_beats_promoted": "the candidate's test-split perplexity is below the promoted version's (on the same "
    "blocks), or nothing is promoted yet",
    "candidate_within_forgetting_bound": "the candidate's general-text perplexity rose at most forgetting_bound over "
    "the base model's",
    "candidate_gguf_checks_pass": "every gguf_model check of this candidate passed",
}
# Blocking: a run stops red at a candidate the gate refused.
GATE_CHECKS = [
    dg.AssetCheckSpec(name, asset="model_version", blocking=True, description=about)
    for name, about in GATE_CHECK_DESCRIPTIONS.items()
]


def gguf_checks_passed(instance: dg.DagsterInstance) -> tuple[bool, str]:
    """The latest gguf_model check results (this candidate's export ran just before in the same lineage)."""
    keys = [dg.AssetCheckKey(dg.AssetKey("gguf_model"), name) for name in GGUF_CHECK_DESCRIPTIONS]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    failed = [k.name for k in keys if k not in records or records[k].status.value != "SUCCEEDED"]
    return not failed, ("failed or missing: " + ", ".join(failed)) if failed else "all pass"


def gate_results(decision: GateDecision, forgetting_bound: float, gguf_detail: str) -> list[dg.AssetCheckResult]:
    outcomes = gate_outcomes(decision, forgetting_bound, gguf_detail)
    return [outcome_result(name, outcomes[name]) for name in GATE_CHECK_DESCRIPTIONS]
