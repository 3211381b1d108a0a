"""Command-line entry points: the main job and the UI, on one shared Dagster instance.

`cpt-pipeline` runs the whole graph (every source partition of the corpus stages, then the model stages) through
Dagster itself, so each run, its lineage and its metadata are recorded in the instance under DAGSTER_HOME and show
in `cpt-ui` (`dagster dev`) afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("cpt_assets")


def prepare_dagster_home() -> Path:
    """DAGSTER_HOME (default .dagster_home/ in the repo) with the repo's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME", REPO_ROOT / ".dagster_home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _offline_defaults() -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch threads spin-wait by default, which slows them ~100x on a small machine shared with other work
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    """Run the main job: every corpus partition, then (unless --corpus-only) the model stages."""
    parser = argparse.ArgumentParser(prog="cpt-pipeline", description=__doc__)
    parser.add_argument("--sources", help="comma-separated source partitions (default: every source in the registry)")
    parser.add_argument("--corpus-only", action="store_true", help="stop after the corpus splits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _offline_defaults()
    home = prepare_dagster_home()

    import dagster as dg

    from cpt_assets.definitions import defs
    from cpt_assets.defs.jobs import CORPUS_JOB, MODEL_JOB, SPLITS_JOB
    from cpt_assets.defs.partitions import source_partitions

    instance = dg.DagsterInstance.get()
    partitions = args.sources.split(",") if args.sources else source_partitions.get_partition_keys()
    unknown = sorted(set(partitions) - set(source_partitions.get_partition_keys()))
    if unknown:
        parser.error(f"unknown source(s) {unknown}; the registry has {source_partitions.get_partition_keys()}")

    failures = []
    for key in partitions:
        log.info("corpus run for source %s", key)
        result = defs.resolve_job_def(CORPUS_JOB).execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, tags={"cpt/launched_by": "cpt-pipeline"}
        )
        if not result.success:
            failures.append(f"{CORPUS_JOB}[{key}] run {result.run_id}")
    jobs = [SPLITS_JOB] if args.corpus_only else [SPLITS_JOB, MODEL_JOB]
    for name in jobs:
        if failures:
            break
        log.info("run of %s", name)
        result = defs.resolve_job_def(name).execute_in_process(
            instance=instance, raise_on_error=False, tags={"cpt/launched_by": "cpt-pipeline"}
        )
        if not result.success:
            failures.append(f"{name} run {result.run_id}")
    if failures:
        log.error("failed: %s (details: `cpt-ui`, Runs page; DAGSTER_HOME=%s)", "; ".join(failures), home)
        return 1
    log.info("all runs succeeded; see them with `cpt-ui` (DAGSTER_HOME=%s)", home)
    return 0


def ui(argv: list[str] | None = None) -> int:
    """`dagster dev` on the repo's workspace.yaml and the shared instance."""
    _offline_defaults()
    prepare_dagster_home()
    args = list(sys.argv[1:] if argv is None else argv)
    dagster = Path(sys.executable).with_name("dagster")
    os.chdir(REPO_ROOT)
    os.execv(str(dagster), [str(dagster), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
