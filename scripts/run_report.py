"""Prints what the main job did, read back from the Dagster instance (DAGSTER_HOME).

Every run's steps with their wall time, and the model stages' figures from their latest materialisations. Used
after `bash scripts/main.sh` on the GPU machine (scripts/device_main.sh), so the per-stage times come from the
same records the UI shows.
"""

from __future__ import annotations

import sys

import dagster as dg

FIGURES = {
    "lora_adapter": (
        "device",
        "gpu_name",
        "precision",
        "method",
        "processes",
        "per_device_batch_size",
        "block_size",
        "learning_rate",
        "steps",
        "tokens_seen",
        "tokens_per_second",
        "mfu_4n",
        "peak_memory_mb",
        "validation_loss_base",
        "validation_loss_final",
        "wall_seconds",
        "fallback_reason",
        "oom_retries",
    ),
    "eval_report": None,  # every plain figure
    "gguf_model": None,
    "model_version": None,
}


def plain(value) -> str:
    inner = getattr(value, "value", value)
    return str(inner) if isinstance(inner, (int, float, str, bool)) or inner is None else ""


def main() -> int:
    instance = dg.DagsterInstance.get()
    records = instance.get_run_records()
    total = 0.0
    out = ["| run | step | seconds |", "| --- | --- | --- |"]
    for record in sorted(records, key=lambda r: r.create_timestamp):
        run = record.dagster_run
        for stat in sorted(instance.get_run_step_stats(run.run_id), key=lambda s: s.start_time or 0):
            seconds = (stat.end_time or 0) - (stat.start_time or 0)
            total += seconds
            partition = run.tags.get("dagster/partition", "")
            out.append(
                f"| {run.job_name}{'[' + partition + ']' if partition else ''} | {stat.step_key} | {seconds:.1f} |"
            )
    out.append(f"| all runs | sum of steps | {total:.1f} |")
    first = min((r.start_time or r.create_timestamp.timestamp()) for r in records) if records else 0
    last = max((r.end_time or 0) for r in records) if records else 0
    out.append(f"| all runs | first start to last end | {last - first:.1f} |")
    for asset, keys in FIGURES.items():
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            out.append(f"\n{asset}: not materialised")
            continue
        metadata = event.asset_materialization.metadata
        out.append(f"\n## {asset}")
        for key in keys or sorted(metadata):
            if key in metadata and plain(metadata[key]) != "":
                out.append(f"- {key}: {plain(metadata[key])}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
