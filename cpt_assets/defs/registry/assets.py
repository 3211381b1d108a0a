"""The model_version asset: each trained candidate becomes a registry version, and the gate decides promotion.

The candidate and the promoted version are scored on the current test split and on the held-out general text
(base as well); the GGUF checks are read from the gguf_model checks of this candidate. `lib.continual`'s pure
gate decides; the deciding checks are blocking, and the promoted GGUF + Modelfile at data_lake/promoted/ change
only on a promotion (the replaced files move to data_lake/promoted_previous/).
"""

import json
from datetime import UTC, datetime

import dagster as dg

from cpt_assets.defs.automation import follow
from cpt_assets.defs.config import config_class, to_dataclass
from cpt_assets.defs.export.assets import GGUF_CHECKS, gguf_model
from cpt_assets.defs.metadata import png_markdown, table_value
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource
from cpt_assets.lib.base_model import describe_model_dir
from cpt_assets.lib.continual import CONTINUAL_FILE, GateConfig, GateInputs, perplexities, promotion_decision
from cpt_assets.lib.control_text import read_control_documents
from cpt_assets.lib.lake import SPLIT_NAMES, read_split, sha256_file
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
    versions_table_columns,
)
from cpt_assets.lib.splits import split_content_hash
from cpt_assets.lib.training import TRAINING_INFO_FILE


class GateRunConfig(config_class(GateConfig, "GateRunConfigBase")):
    """GateConfig's fields as run config (a class, so type checkers accept it as an annotation)."""


DECIDING_CHECKS = ("candidate_beats_promoted", "candidate_within_forgetting_bound", "candidate_gguf_checks_pass")


def gguf_checks(instance: dg.DagsterInstance) -> tuple[bool, str]:
    """The latest gguf_model check results (this candidate's export ran just before in the same lineage)."""
    keys = [dg.AssetCheckKey(dg.AssetKey("gguf_model"), name) for name in GGUF_CHECKS]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    failed = [k.name for k in keys if k not in records or records[k].status.value != "SUCCEEDED"]
    return not failed, ("failed or missing: " + ", ".join(failed)) if failed else "all pass"


@dg.asset(
    deps=[gguf_model, control_text],
    group_name="registry",
    kinds={"duckdb", "ollama"},
    automation_condition=follow(),
    check_specs=[dg.AssetCheckSpec(name, asset="model_version", blocking=True) for name in DECIDING_CHECKS],
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
    control = [d.text for d in read_control_documents(lk) if d.part == "control"]
    if not control:
        raise FileNotFoundError(f"no general-text control set at {lk.control_text_path}: materialise control_text")
    test = [chunk.text for chunk in read_split(lk, "test")]
    models = {"base": None, "candidate": lk.adapter_dir}
    if promoted:
        models["promoted"] = lk.registry_version_dir(promoted.version) / "adapter"
    scores = perplexities(
        lk.base_model_dir, models, {"domain": test, "control": control}, settings.block_size, settings.max_blocks
    )
    gguf_ok, gguf_detail = gguf_checks(context.instance)
    inputs = GateInputs(
        candidate_domain_perplexity=scores["candidate"]["domain"],
        promoted_domain_perplexity=scores["promoted"]["domain"] if promoted else None,
        base_control_perplexity=scores["base"]["control"],
        candidate_control_perplexity=scores["candidate"]["control"],
        gguf_checks_passed=gguf_ok,
        gguf_checks_detail=gguf_detail,
    )
    decision = promotion_decision(inputs, settings.forgetting_bound)

    version_id = next_version_id(versions)
    verification = json.loads((lk.gguf_dir / "verification.json").read_text())
    target = lk.gguf_dir / (lk.gguf_dir / "Modelfile").read_text().split("FROM ./", 1)[1].split()[0]
    keep_version_files(lk, version_id, lk.adapter_dir, target, lk.gguf_dir / "Modelfile")
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
            "domain_perplexity_base": round(scores["base"]["domain"], 4),
            "domain_perplexity_candidate": round(inputs.candidate_domain_perplexity, 4),
            "domain_perplexity_promoted": (
                round(inputs.promoted_domain_perplexity, 4) if inputs.promoted_domain_perplexity is not None else None
            ),
            "control_perplexity_base": round(inputs.base_control_perplexity, 4),
            "control_perplexity_candidate": round(inputs.candidate_control_perplexity, 4),
            "control_perplexity_change": round(decision.control_change, 5),
            "promoted_version": promoted_now.version if promoted_now else "none",
            "promoted_gguf": dg.MetadataValue.path(str(lk.promoted_dir / "model.gguf")),
            "gguf_sha256": row.gguf_sha256,
            "versions": table_value(version_rows(versions), versions_table_columns()),
            "versions_chart": png_markdown(chart, "model versions"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="candidate_beats_promoted", passed=decision.beats_promoted, description=decision.reason
            ),
            dg.AssetCheckResult(
                check_name="candidate_within_forgetting_bound",
                passed=decision.within_forgetting_bound,
                description=f"general-text perplexity {decision.control_change:+.2%} vs base "
                f"(bound {settings.forgetting_bound:.0%})",
            ),
            dg.AssetCheckResult(
                check_name="candidate_gguf_checks_pass", passed=decision.gguf_ok, description=gguf_detail
            ),
        ],
    )
