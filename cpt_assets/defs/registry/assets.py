"""The model_version asset: each trained candidate becomes a registry version, and the gate decides promotion.

The base and candidate figures are eval_report's (the current test split and the held-out general text, one
figure per model wherever the UI shows it); the promoted version is scored on the very blocks eval_report scored
(data_lake/eval/latest/scores.json and control_blocks.json). The GGUF checks are read from the
gguf_model checks of this candidate. `lib.continual`'s pure gate decides; the deciding checks are blocking, and
the promoted GGUF + Modelfile at data_lake/promoted/ change only on a promotion (the replaced files move to
data_lake/promoted_previous/).
"""

import json
from datetime import UTC, datetime

import dagster as dg

from cpt_assets.defs.automation import follow
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.evaluation.assets import eval_report
from cpt_assets.defs.export.assets import gguf_model
from cpt_assets.defs.metadata import numbers, png_markdown, short_hash, table
from cpt_assets.defs.registry.checks import GATE_CHECKS, gate_results, gguf_checks_passed
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource
from cpt_assets.lib.base_model import describe_model_dir
from cpt_assets.lib.continual import GateConfig, GateInputs, perplexities_on_blocks, promotion_decision
from cpt_assets.lib.evaluation import adapter_weights_sha256
from cpt_assets.lib.lake import (
    CONTINUAL_FILE,
    EVAL_REPORT_JSON,
    SPLIT_NAMES,
    TRAINING_INFO_FILE,
    read_scored_blocks,
    read_split,
    read_token_blocks,
    sha256_file,
)
from cpt_assets.lib.registry import (
    ModelVersion,
    append_version,
    keep_version_files,
    next_version_id,
    plot_versions,
    promote,
    promoted_version,
    read_versions,
    version_rows,
)
from cpt_assets.lib.splits import split_content_hash


class GateRunConfig(config_class(GateConfig, "GateRunConfigBase")):
    """GateConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


VERSION_COLUMNS = ["version", "parent", "decision", "test_ppl", "general"]


def eval_figures(lk) -> tuple[dict, list[list[int]], list[list[int]]]:
    """eval_report's report of the current adapter, its scored test blocks and its general-text blocks.

    Raises:
        FileNotFoundError: no eval report, or one without the general-text control (materialise control_text, then
            eval_report).
        ValueError: the report scored another adapter than the one in the lake (materialise eval_report).
    """
    if not lk.eval_scores_path.exists():
        raise FileNotFoundError(f"no eval report at {lk.eval_dir}: materialise eval_report")
    report = json.loads((lk.eval_dir / EVAL_REPORT_JSON).read_text())
    scored = read_scored_blocks(lk.eval_scores_path)
    if scored is None or scored.adapter_sha256 != adapter_weights_sha256(lk.adapter_dir):
        raise ValueError(
            f"the eval report at {lk.eval_dir} scored another adapter than {lk.adapter_dir}: materialise eval_report"
        )
    control_blocks = read_token_blocks(lk.eval_control_blocks_path)
    if not report.get("control") or not control_blocks:
        raise FileNotFoundError(
            f"the eval report at {lk.eval_dir} has no general-text figures (no control set at "
            f"{lk.control_text_path}): materialise control_text, then eval_report"
        )
    return report, [list(block) for block in scored.blocks], control_blocks


@dg.asset(
    deps=[gguf_model, eval_report, control_text],
    group_name="registry",
    kinds={"duckdb", "ollama"},
    automation_condition=follow(),
    check_specs=GATE_CHECKS,
    description="Registers the trained candidate as a version (parent, split and config hashes, domain and "
    "general-text perplexity, GGUF fidelity and sha256, decision and reason) in data_lake/registry/versions.parquet "
    "(DuckDB view model_versions) and promotes it to data_lake/promoted/model.gguf only when it beats the promoted "
    "version on the current test split, stays within the forgetting bound and its GGUF checks pass.",
)
def model_version(context: dg.AssetExecutionContext, config: GateRunConfig, lake: LakeResource) -> dg.MaterializeResult:
    settings = to_dataclass(config, GateConfig)
    lk = lake.lake()
    versions = read_versions(lk)
    promoted = promoted_version(versions)
    report, domain_blocks, control_blocks = eval_figures(lk)
    promoted_scores = (
        perplexities_on_blocks(
            lk.base_model_dir,
            lk.registry_adapter_dir(promoted.version),
            {"domain": domain_blocks, "control": control_blocks},
            batch_size=int(report["config"]["batch_size"]),
            device=settings.device,
        )
        if promoted
        else None
    )
    gguf_ok, gguf_detail = gguf_checks_passed(context.instance)
    inputs = GateInputs(
        candidate_domain_perplexity=report["adapted"]["perplexity"],
        promoted_domain_perplexity=promoted_scores["domain"] if promoted_scores else None,
        base_control_perplexity=report["control"]["base_perplexity"],
        candidate_control_perplexity=report["control"]["adapted_perplexity"],
        gguf_checks_passed=gguf_ok,
        gguf_checks_detail=gguf_detail,
    )
    decision = promotion_decision(inputs, settings.forgetting_bound)

    version_id = next_version_id(versions)
    verification = json.loads(lk.gguf_verification_path.read_text())
    target = lk.gguf_dir / lk.modelfile_path.read_text().split("FROM ./", 1)[1].split()[0]
    keep_version_files(lk, version_id, lk.adapter_dir, target, lk.modelfile_path)
    lineage = json.loads((lk.adapter_dir / CONTINUAL_FILE).read_text())
    training = json.loads((lk.adapter_dir / TRAINING_INFO_FILE).read_text())
    row = ModelVersion(
        version=version_id,
        parent=lineage["parent_version"],
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        run_id=context.run_id,
        split_hashes=json.dumps({name: split_content_hash(read_split(lk, name)) for name in SPLIT_NAMES}),
        config_hash=str(training.get("result", {}).get("config_hash", "")),
        base_sha256=describe_model_dir(lk.base_model_dir, "").weights_sha256,
        domain_perplexity=inputs.candidate_domain_perplexity,
        promoted_domain_perplexity=inputs.promoted_domain_perplexity,
        base_control_perplexity=inputs.base_control_perplexity,
        control_perplexity=inputs.candidate_control_perplexity,
        gguf_fidelity=json.dumps(verification.get("fidelity", verification), default=str)[:20000],
        gguf_sha256=sha256_file(target),
        decision="promoted" if decision.promote else "rejected",
        reason=decision.reason,
    )
    versions = append_version(lk, row)
    if decision.promote:
        promote(lk, version_id)
    context.log.info(f"{version_id} (parent {row.parent or 'base'}): {row.decision}: {row.reason}")
    chart = plot_versions(versions, lk.registry_chart_path)
    promoted_now = promoted_version(versions)
    return dg.MaterializeResult(
        metadata={
            "version": version_id,
            "parent_version": row.parent or "none",
            "decision": row.decision,
            "reason": row.reason,
            **numbers(
                {
                    "domain_perplexity_base": report["base"]["perplexity"],
                    "domain_perplexity_candidate": inputs.candidate_domain_perplexity,
                    "domain_perplexity_promoted": inputs.promoted_domain_perplexity,  # left out before a promotion
                    "control_perplexity_base": inputs.base_control_perplexity,
                    "control_perplexity_candidate": inputs.candidate_control_perplexity,
                    "control_perplexity_change_pct": 100 * decision.control_change,
                }
            ),
            "promoted_version": promoted_now.version if promoted_now else "none",
            "promoted_gguf": dg.MetadataValue.path(str(lk.promoted_gguf_path)),
            "gguf_sha256": short_hash(row.gguf_sha256),
            # Five columns fit the metadata column; every field is in the DuckDB view model_versions.
            "versions": table(
                version_rows(versions),
                VERSION_COLUMNS,
                descriptions={"test_ppl": "test-split perplexity", "general": "general-text perplexity"},
            ),
            "versions_chart": png_markdown(chart, "model versions"),
        },
        check_results=gate_results(decision, settings.forgetting_bound, gguf_detail),
    )
