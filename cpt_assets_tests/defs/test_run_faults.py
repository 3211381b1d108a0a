"""Fast fault tests on real assets: leftovers of a killed writer, the splits snapshot, empty sources, user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from cpt_assets.defs.corpus.assets import raw_pdfs
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.lib.lake import write_records
from cpt_assets.lib.types import Chunk
from cpt_assets_tests.defs.conftest import check_evaluations, materialization


def test_the_next_splits_run_removes_a_killed_writers_temp_files(corpus_lake):
    lake = corpus_lake.lake
    orphans = [
        lake.splits_dir / ".train.parquet.tmp-0badf00d",
        lake.splits_dir / ".assignments.parquet.tmp-0badf00d",
        lake.root / ".catalog.duckdb.tmp-0badf00d",
        lake.root / ".catalog.duckdb.tmp-0badf00d.wal",
    ]
    for path in orphans:
        path.write_bytes(b"half a file")
    (lake.splits_dir / ".hf.tmp-0badf00d").mkdir()
    result = corpus_lake.materialize([corpus_splits])
    assert result.success
    assert not any(path.exists() for path in orphans) and not (lake.splits_dir / ".hf.tmp-0badf00d").exists()
    assert materialization(result, "corpus_splits")["orphan_temp_files_removed"] == 5
    assert sorted(p.name for p in lake.splits_dir.iterdir()) == [
        "assignments.parquet",
        "hf",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]


def test_splits_record_the_chunk_versions_they_read_and_skip_chunks_no_materialisation_recorded(corpus_lake):
    lake = corpus_lake.lake
    recorded = {key: materialization(corpus_lake.results[key], "clean_chunks") for key in ("ietf", "nist")}
    result = corpus_lake.materialize([corpus_splits])
    meta = materialization(result, "corpus_splits")
    versions = {
        key: corpus_lake.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("clean_chunks"), asset_partitions=[key]), limit=1
        )
        .records[0]
        .asset_materialization.tags["dagster/data_version"]
        for key in ("ietf", "nist")
    }
    assert meta["chunk_versions_used"] == versions and meta["sources_missing"] == {}
    assert all(recorded[key]["chunks"] > 0 for key in recorded)

    # a writer that renamed new chunks into place and died before its materialisation event
    original = lake.chunks_path("nist").read_bytes()
    chunks = lake.read_chunks("nist")
    write_records(chunks[:-1], Chunk, lake.chunks_path("nist"))
    try:
        result = corpus_lake.materialize([corpus_splits])
        meta = materialization(result, "corpus_splits")
        assert sorted(meta["sources_missing"]) == ["nist"]
        assert "not the last recorded materialisation" in meta["sources_missing"]["nist"]
        assert meta["sources"] == ["ietf"]
        assert not check_evaluations(result)["every_source_included"].passed
    finally:
        lake.chunks_path("nist").write_bytes(original)
        assert corpus_lake.materialize([corpus_splits]).success


def test_an_empty_pdf_folder_is_a_red_blocking_check_naming_the_folder(tmp_path):
    empty = tmp_path / "typo"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a pdf")
    registry = tmp_path / "sources.yaml"
    registry.write_text(f"sources:\n  - name: ietf\n    kind: pdf_folder\n    location: {empty}\n")
    result = dg.materialize(
        [raw_pdfs],
        partition_key="ietf",
        resources={
            "lake": LakeResource(root=str(tmp_path / "lake")),
            "sources": SourcesResource(registry=str(registry)),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    check = check_evaluations(result)["source_has_documents"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description == f"[ietf] source 'ietf': no PDFs found in {empty}"  # the partition it judged


def _cli(tmp_path: Path, registry_text: str, *args: str) -> subprocess.CompletedProcess:
    registry = tmp_path / "sources.yaml"
    registry.write_text(registry_text)
    env = {
        **os.environ,
        "CPT_SOURCES": str(registry),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "CPT_DATA_LAKE": str(tmp_path / "lake"),
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    return subprocess.run(
        [sys.executable, "-m", "cpt_assets.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_registry_errors_are_one_clear_line_without_a_traceback(tmp_path):
    cases = {
        "sources:\n  - name: a\n    kind: ftp\n    location: x\n": "unknown kind 'ftp'",
        "sources:\n  - name: a\n    kind: pdf_folder\n    location: x\n"
        "  - name: a\n    kind: pdf_folder\n    location: y\n": "duplicate name 'a'",
        "sources:\n  - name: Bad Name\n    kind: pdf_folder\n    location: x\n": "invalid name 'Bad Name'",
    }
    for text, message in cases.items():
        process = _cli(tmp_path, text)
        assert process.returncode == 2, process.stderr
        assert message in process.stderr and "Traceback" not in process.stderr
        assert process.stderr.startswith("cpt-pipeline: error: ")


def test_an_unwritable_lake_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    registry = tmp_path / "sources.yaml"
    registry.write_text(f"sources:\n  - name: a\n    kind: pdf_folder\n    location: {tmp_path}\n")
    env = {
        **os.environ,
        "CPT_SOURCES": str(registry),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "CPT_DATA_LAKE": str(blocker / "lake"),
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    process = subprocess.run(
        [sys.executable, "-m", "cpt_assets.cli", "--corpus-only"], env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert f"data lake {blocker / 'lake'} (CPT_DATA_LAKE) cannot be created" in process.stderr
