"""Corpus stages of the main job: through the instance's run queue (parallel) against one partition after another.

Both from an empty lake and instance, on the same sources, in one run of this script:
- `queued`: `cpt-pipeline --corpus-only`, what `bash scripts/main.sh` runs first (a backfill of corpus_job run in
  parallel under the QueuedRunCoordinator, then splits_job);
- `sequential`: the way the CLI ran before the run queue: each partition's corpus assets materialised in this
  process, one after another, then the splits.
Prints the wall time of each and the ratio. The splits of both must be the same (same split hashes).

    .venv/bin/python -m cpt_assets_tests.bench.bench_runs [--sources nist,ietf]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def split_hashes(home: Path) -> dict:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("corpus_splits"))
        assert event is not None and event.asset_materialization is not None, "no corpus_splits materialisation"
        return event.asset_materialization.metadata["split_hashes"].value  # type: ignore[return-value]


def queued(base: Path, sources: str) -> float:
    env = {**os.environ, "DAGSTER_HOME": str(base / "home"), "CPT_DATA_LAKE": str(base / "lake")}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cpt_assets.cli", "--corpus-only", "--sources", sources],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"cpt-pipeline failed:\n{done.stderr[-3000:]}")
    return seconds


def sequential(base: Path, sources: str) -> float:
    script = f"""
import dagster as dg
from cpt_assets.defs.corpus.assets import clean_chunks, page_text, raw_pdfs
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.resources import LakeResource, SourcesResource
resources = {{"lake": LakeResource(root={str(base / "lake")!r}), "sources": SourcesResource()}}
with dg.DagsterInstance.get() as instance:
    for source in {sources.split(",")!r}:
        assert dg.materialize([raw_pdfs, page_text, clean_chunks], partition_key=source, resources=resources,
                              instance=instance).success
    assert dg.materialize([corpus_splits], resources=resources, instance=instance).success
"""
    home = base / "home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "CPT_DATA_LAKE": str(base / "lake")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sequential materialisation failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="nist,ietf")
    args = parser.parse_args()
    os.environ.setdefault("CPT_MIRROR", str(REPO.parent / "shared" / "corpus"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        seq = sequential(base / "sequential", args.sources)
        par = queued(base / "queued", args.sources)
        same = split_hashes(base / "sequential" / "home") == split_hashes(base / "queued" / "home")
    print(f"cores: {os.cpu_count()}, sources: {args.sources}")
    print("| way | wall s |")
    print("| --- | --- |")
    print(f"| sequential, one process | {seq:.1f} |")
    print(f"| queued runs (cpt-pipeline --corpus-only) | {par:.1f} |")
    print(f"sequential / queued: {seq / par:.2f}x; same split hashes: {same}")


if __name__ == "__main__":
    main()
