"""Where the main job's time goes: every step of its latest runs, and the phases inside the model stages.

Reads an instance the main job wrote (default `.dagster_home`, the one `bash scripts/main.sh` uses) and its lake:
- per run of the last main job (each corpus partition, splits_job, model_job): wall time, and each step's time from
  STEP_START to STEP_SUCCESS, with the time between steps (step processes starting) as its own row;
- inside `lora_adapter`: the optimizer steps' time (the rest is loading, packing, validation and saving);
- inside `eval_report`: its phase timings (report.json);
- inside `gguf_model`: conversion, quantization, imatrix, KLD runs and the llama.cpp verification (verification.json).
Figures, not ratios: run it after `bash scripts/main.sh` on a fresh lake and instance, before and after a change.

    .venv/bin/python -m cpt_assets_tests.bench.bench_main_job [--home .dagster_home] [--lake data_lake]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _runs(instance, session: str | None):
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
    if not runs:
        raise SystemExit("no successful run in this instance")
    session = session or runs[0].tags.get("cpt/session")
    return [run for run in reversed(runs) if run.tags.get("cpt/session") == session]


def step_rows(instance, run) -> list[tuple[str, float]]:
    import dagster as dg

    starts, rows = {}, []
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    for record in instance.all_logs(run.run_id, of_type=kinds):
        event = record.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[record.step_key] = record.timestamp
        else:
            rows.append((record.step_key, record.timestamp - starts[record.step_key]))
    return rows


def run_times(instance, run_id: str) -> tuple[float, float]:
    record = instance.get_run_record_by_id(run_id)
    if record is None or record.start_time is None or record.end_time is None:
        raise SystemExit(f"run {run_id} has no start or end time")
    return record.start_time, record.end_time


def main() -> None:
    import dagster as dg

    parser = argparse.ArgumentParser(description="Where the main job's time goes, per run, step and phase.")
    parser.add_argument("--home", type=Path, default=REPO / ".dagster_home")
    parser.add_argument("--lake", type=Path, default=REPO / "data_lake")
    parser.add_argument("--session", help="cpt/session tag of the main job (default: the latest)")
    args = parser.parse_args()

    with dg.DagsterInstance.from_config(str(args.home)) as instance:
        runs = _runs(instance, args.session)
        times = {run.run_id: run_times(instance, run.run_id) for run in runs}
        first, last = min(start for start, _ in times.values()), max(end for _, end in times.values())
        print(f"main job: {len(runs)} runs, {last - first:.1f} s from the first run's start to the last run's end")
        print("| run | step | seconds |")
        print("| --- | --- | --- |")
        for run in runs:
            label = run.job_name + (f"[{run.tags['dagster/partition']}]" if "dagster/partition" in run.tags else "")
            rows = step_rows(instance, run)
            for step, seconds in rows:
                print(f"| {label} | {step} | {seconds:.1f} |")
            wall = times[run.run_id][1] - times[run.run_id][0]
            # merged_model and eval_report run side by side: then this row is less than the time between steps
            print(f"| {label} | (run wall time minus its steps) | {wall - sum(s for _, s in rows):.1f} |")
            print(f"| {label} | **run wall time** | {wall:.1f} |")

    lake = args.lake
    for training in sorted(lake.glob("models/adapter/versions/*/cpt_training.json"))[-1:]:
        result = json.loads(training.read_text())["result"]
        print(
            f"\nlora_adapter: {sum(result['step_seconds']):.1f} s in {len(result['step_seconds'])} optimizer steps "
            f"of {result['wall_seconds']:.1f} s"
        )
    for report in sorted(lake.glob("eval/versions/*/report.json"), key=lambda p: p.stat().st_mtime)[-1:]:
        timings = json.loads(report.read_text())["timings"]
        print("eval_report phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    for verification in sorted(lake.glob("gguf/versions/*/verification.json"), key=lambda p: p.stat().st_mtime)[-1:]:
        data = json.loads(verification.read_text())
        files = {f["file_type"]: f["seconds"] for f in data["files"]}
        kld = [row["seconds"] for row in data["kld"]]
        imatrix = data["imatrix"]["seconds"] if data["imatrix"] else 0.0
        verified = ", ".join(f"{row['type']} {row.get('seconds', float('nan')):.1f}" for row in data["hf_fidelity"])
        print(
            f"gguf_model phases (s): convert F16 {files.pop('F16', 0.0):.1f}, quantize the kept files "
            f"{sum(files.values()):.1f}, imatrix {imatrix:.1f}, {len(kld)} KLD runs {sum(kld):.1f}, "
            f"llama.cpp verification against the HF model: {verified}"
        )


if __name__ == "__main__":
    main()
