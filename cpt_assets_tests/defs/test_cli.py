"""The main job as a user runs it: `cpt-pipeline` records every run in the Dagster instance that `cpt-ui` reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cpt_assets.lib.lake import Lake


def run_pipeline(tmp_path: Path, corpus_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    home, lake = tmp_path / "dagster_home", tmp_path / "data_lake"
    env = {**os.environ, "DAGSTER_HOME": str(home), "CPT_DATA_LAKE": str(lake), "CPT_MIRROR": str(corpus_dir)}
    env.pop("CPT_SOURCES", None)
    process = subprocess.run(
        [sys.executable, "-m", "cpt_assets.cli", *args], env=env, capture_output=True, text=True, timeout=3600
    )
    return process, home, lake


def runs_in(home: Path) -> list:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs())


def test_corpus_only_main_job_materialises_every_default_source_into_the_shared_instance(tmp_path, corpus_dir):
    process, home, lake_root = run_pipeline(tmp_path, corpus_dir, "--corpus-only")
    assert process.returncode == 0, process.stderr[-3000:]
    assert (home / "dagster.yaml").read_text() == (Path(__file__).parents[2] / "dagster.yaml").read_text()
    runs = runs_in(home)
    assert sorted(r.job_name for r in runs) == ["corpus_job", "corpus_job", "splits_job"]
    assert {r.tags.get("dagster/partition") for r in runs if r.job_name == "corpus_job"} == {"nist", "ietf"}
    assert all(r.is_success for r in runs)
    # launched through the instance: one backfill, every run with the code location's origin (the UI's job pages)
    assert len({r.tags["dagster/backfill"] for r in runs if r.job_name == "corpus_job"}) == 1
    assert {r.remote_job_origin.location_name for r in runs} == {"cpt_assets"}
    lake = Lake(lake_root)
    manifests = {source: lake.read_manifest(source) for source in ("nist", "ietf")}
    assert {s: sum(r.status == "ok" for r in rows) for s, rows in manifests.items()} == {"nist": 11, "ietf": 12}
    assert all(r.origin == "mirror" for rows in manifests.values() for r in rows)
    assert lake.catalog_path.exists() and lake.hf_dataset_dir.exists()


def test_an_unknown_source_is_refused_by_name(tmp_path, corpus_dir):
    process, _, _ = run_pipeline(tmp_path, corpus_dir, "--sources", "nist,etsi")
    assert process.returncode == 2 and "etsi" in process.stderr


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_main_job_runs_the_whole_graph_to_a_gguf_llama_cpp_loads(tmp_path, corpus_dir):
    """The README's main command end to end on the embedded default (real 135M model, CPU): ~11 minutes here."""
    process, home, lake_root = run_pipeline(tmp_path, corpus_dir)
    assert process.returncode == 0, process.stderr[-5000:]
    runs = runs_in(home)
    assert sorted(r.job_name for r in runs) == ["corpus_job", "corpus_job", "model_job", "splits_job"]
    lake = Lake(lake_root)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        report = instance.get_latest_materialization_event(dg.AssetKey("eval_report")).asset_materialization
        gguf = instance.get_latest_materialization_event(dg.AssetKey("gguf_model")).asset_materialization
        version = instance.get_latest_materialization_event(dg.AssetKey("model_version")).asset_materialization
    assert report.metadata["adapted_perplexity"].value < report.metadata["base_perplexity"].value
    assert report.metadata["control_adapted_perplexity"].value > 1  # the forgetting control is measured
    target = Path(gguf.metadata["gguf_path"].value)
    assert target.parent == lake.version_dir("gguf", gguf.metadata["version"].value)
    assert target.name.startswith("model-") and (lake.gguf_dir / target.name).exists()
    # The main job ends in a registry version; the first one is promoted to the stable path a user's Ollama reads.
    assert version.metadata["version"].value == "v1" and version.metadata["decision"].value == "promoted"
    assert lake.promoted_gguf_path.read_bytes() == target.read_bytes()

    from cpt_assets.lib.gguf_verify import open_llama

    llm = open_llama(lake.promoted_gguf_path, n_ctx=256, verbose=False)
    try:
        text = llm("The purpose of a risk assessment is", max_tokens=16, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()
    assert len(text.split()) >= 3
