"""Scheduled corpus refresh and the automation that makes downstream corpus assets follow it."""

import dagster as dg

from cpt_assets.defs.jobs import refresh_job
from cpt_assets.defs.partitions import source_partitions


@dg.schedule(
    job=refresh_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: re-fetch every source (skipping what is already there); page text, chunks and splits "
    "follow through their eager automation conditions, and unchanged documents are reused, not re-extracted.",
)
def corpus_refresh_schedule(context: dg.ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")  # one run per source and day, even on retries
    return [
        dg.RunRequest(run_key=f"refresh-{key}-{stamp}", partition_key=key)
        for key in source_partitions.get_partition_keys()
    ]


corpus_automation_sensor = dg.AutomationConditionSensorDefinition(
    "corpus_automation",
    target=dg.AssetSelection.groups("corpus"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)
