"""Declarative automation of the model stages, and the one switch that turns it off.

After a corpus refresh, `lora_adapter` trains when the splits' data version changed (a refresh that changes no
document leaves it unchanged, so nothing trains); evaluation, merge, export and the registry follow eagerly, so a
refresh with new documents ends in a promotion decision. Set CPT_MODEL_AUTOMATION=off (or 0/false) in the
environment of the code location to take the conditions off the model assets; the `model_automation` sensor can
also be stopped in the UI.
"""

import os

import dagster as dg

MODEL_AUTOMATION = os.environ.get("CPT_MODEL_AUTOMATION", "on").strip().lower() not in ("off", "0", "false", "no")

TRAIN_AUTOMATION = (
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("train when the splits' data version changed")

FOLLOW_AUTOMATION = dg.AutomationCondition.eager()


def follow() -> dg.AutomationCondition | None:
    """The condition of the stages after training (None when automation is switched off)."""
    return FOLLOW_AUTOMATION if MODEL_AUTOMATION else None


model_automation_sensor = dg.AutomationConditionSensorDefinition(
    "model_automation",
    target=dg.AssetSelection.groups("model", "evaluation", "export", "registry"),
    default_status=dg.DefaultSensorStatus.RUNNING if MODEL_AUTOMATION else dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
)
