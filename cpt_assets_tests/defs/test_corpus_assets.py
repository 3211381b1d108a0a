"""The corpus assets materialised for real: two sources, bad inputs, incremental refresh, splits and DuckDB."""

from __future__ import annotations

import duckdb
import pytest

from cpt_assets.defs.corpus.assets import clean_chunks, page_text, raw_pdfs
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.lib.lake import read_records
from cpt_assets.lib.splits import Assignment
from cpt_assets_tests.defs.conftest import (
    CORPUS_ASSETS,
    IETF_BAD,
    IETF_GOOD,
    NIST_GOOD,
    check_evaluations,
    failure_message,
    materialization,
)


def test_folder_source_records_every_bad_input_and_extracts_the_rest(corpus_lake):
    result = corpus_lake.results["ietf"]
    assert result.success
    raw = materialization(result, "raw_pdfs")
    assert raw["documents"] == len(IETF_GOOD) + len(IETF_BAD) + 2
    assert raw["documents_ok"] == len(IETF_GOOD)
    assert raw["documents_failed"] == len(IETF_BAD) + 2
    manifest = {row.name: row for row in corpus_lake.lake.read_manifest("ietf")}
    assert "encrypted" in manifest["libreoffice-writer-password.pdf"].error.lower()
    assert "empty" in manifest["zero-bytes.pdf"].error.lower() or "0 bytes" in manifest["zero-bytes.pdf"].error
    assert "html" in manifest["saved-page.pdf"].error.lower()
    assert manifest["invalid.pdf"].error
    assert all(manifest[name].status == "ok" and manifest[name].pages > 0 for name in IETF_GOOD)

    checks = check_evaluations(result)
    assert not checks["all_pdfs_readable"].passed  # a warning naming the failures
    assert checks["every_pdf_extracted_or_explained"].passed
    assert checks["no_empty_chunks"].passed
    assert checks["no_duplicate_chunks"].passed

    pages = materialization(result, "page_text")
    assert pages["documents_extracted"] == len(IETF_GOOD)
    assert pages["pages"] == sum(manifest[name].pages for name in IETF_GOOD)
    chunks = materialization(result, "clean_chunks")
    stored = corpus_lake.lake.read_chunks("ietf")
    assert chunks["chunks"] == len(stored) > 0
    assert chunks["tokens"] == sum(c.n_tokens for c in stored)
    assert chunks["documents_rechunked"] == len(IETF_GOOD)
    assert "data:image/png;base64," in chunks["token_histogram"]
    assert {c.doc_id for c in stored} == {f"ietf/{name}" for name in IETF_GOOD}


def test_url_source_downloads_from_a_real_server_and_records_the_404(corpus_lake):
    result = corpus_lake.results["nist"]
    raw = materialization(result, "raw_pdfs")
    assert raw["documents_ok"] == len(NIST_GOOD)
    assert raw["downloaded_mb"] > 0 and raw["copied_mb"] == 0
    manifest = {row.name: row for row in corpus_lake.lake.read_manifest("nist")}
    assert manifest["gone.pdf"].status == "failed" and "404" in manifest["gone.pdf"].error
    assert materialization(result, "clean_chunks")["chunks"] == len(corpus_lake.lake.read_chunks("nist")) > 0


def test_splits_are_by_document_and_queryable_through_duckdb(corpus_lake):
    result = corpus_lake.results["splits"]
    assert result.success
    checks = check_evaluations(result)
    assert checks["no_document_in_two_splits"].passed
    assert checks["split_ratios_within_tolerance"].passed
    lake = corpus_lake.lake
    assignments = read_records(lake.split_assignments_path, Assignment)
    documents = len(IETF_GOOD) + len(NIST_GOOD)
    assert len(assignments) == documents == materialization(result, "corpus_splits")["documents"]

    connection = duckdb.connect(str(lake.catalog_path), read_only=True)
    try:
        per_split = dict(
            connection.execute(
                "SELECT split, count(DISTINCT doc_id) FROM ("
                " SELECT 'train' AS split, doc_id FROM train UNION ALL"
                " SELECT 'validation', doc_id FROM validation UNION ALL SELECT 'test', doc_id FROM test)"
                " GROUP BY split"
            ).fetchall()
        )
        chunks_total = connection.execute("SELECT count(*) FROM chunks").fetchall()[0][0]
        in_two = connection.execute(
            "SELECT doc_id FROM (SELECT doc_id FROM train INTERSECT SELECT doc_id FROM test)"
        ).fetchall()
    finally:
        connection.close()
    assert sum(per_split.values()) == documents and in_two == []
    assert chunks_total == len(lake.read_chunks("ietf")) + len(lake.read_chunks("nist"))

    import datasets

    dataset = datasets.load_from_disk(str(lake.hf_dataset_dir))
    assert set(dataset) == {"train", "validation", "test"}
    assert (
        sum(len(dataset[name]) for name in dataset)
        == sum(len(lake.read_chunks(s)) for s in ("ietf", "nist"))
        - materialization(result, "corpus_splits")["cross_split_duplicates_dropped"]
    )


def test_refresh_of_unchanged_sources_reextracts_nothing(corpus_lake):
    before = corpus_lake.lake.chunks_path("ietf").read_bytes()
    result = corpus_lake.materialize(CORPUS_ASSETS, partition_key="ietf")
    assert result.success
    assert materialization(result, "raw_pdfs")["new_or_changed"] == 0
    assert materialization(result, "page_text")["reextracted_nothing"] is True
    chunks = materialization(result, "clean_chunks")
    assert chunks["rechunked_nothing"] is True and chunks["documents_reused"] == len(IETF_GOOD)
    assert "nothing changed" in chunks["refresh"] and "seconds" in chunks
    assert corpus_lake.lake.chunks_path("ietf").read_bytes() == before


def test_a_new_document_is_chunked_alone_and_keeps_old_assignments(corpus_lake, corpus_dir):
    import shutil

    lake = corpus_lake.lake
    old_chunks = {c.chunk_id for c in lake.read_chunks("ietf")}
    old_assignments = {a.doc_id: a.split for a in read_records(lake.split_assignments_path, Assignment)}
    shutil.copy(corpus_dir / "ietf" / "rfc6973.txt.pdf", corpus_lake.ietf_folder / "rfc6973.txt.pdf")
    result = corpus_lake.materialize(CORPUS_ASSETS, partition_key="ietf")
    chunks = materialization(result, "clean_chunks")
    assert chunks["documents_rechunked"] == 1 and chunks["documents_reused"] == len(IETF_GOOD)
    assert old_chunks <= {c.chunk_id for c in lake.read_chunks("ietf")}
    splits = corpus_lake.materialize([corpus_splits])
    assert materialization(splits, "corpus_splits")["new_documents"] == 1
    new_assignments = {a.doc_id: a.split for a in read_records(lake.split_assignments_path, Assignment)}
    assert {doc: new_assignments[doc] for doc in old_assignments} == old_assignments


def test_a_missing_source_folder_fails_by_name_and_keeps_what_was_materialised(corpus_lake, tmp_path):
    lake = corpus_lake.lake
    manifest_before = lake.manifest_path("ietf").read_bytes()
    chunks_before = lake.chunks_path("ietf").read_bytes()
    moved = tmp_path / "moved"
    corpus_lake.ietf_folder.rename(moved)
    try:
        result = corpus_lake.materialize(CORPUS_ASSETS, partition_key="ietf", raise_on_error=False)
    finally:
        moved.rename(corpus_lake.ietf_folder)
    assert not result.success
    assert str(corpus_lake.ietf_folder) in failure_message(result)
    assert lake.manifest_path("ietf").read_bytes() == manifest_before
    assert lake.chunks_path("ietf").read_bytes() == chunks_before


@pytest.mark.parametrize("config", [{"target_tokens": 0}, {"target_tokens": 256, "max_tokens": 100}])
def test_a_bad_chunking_config_fails_naming_the_field_before_writing(corpus_lake, config):
    before = corpus_lake.lake.chunks_path("nist").read_bytes()
    result = corpus_lake.materialize(
        [clean_chunks],
        partition_key="nist",
        raise_on_error=False,
        run_config={"ops": {"clean_chunks": {"config": config}}},
        selection=[clean_chunks.key],
    )
    assert not result.success
    assert f"ChunkingConfig.{next(iter(config)) if len(config) == 1 else 'max_tokens'}" in failure_message(result)
    assert corpus_lake.lake.chunks_path("nist").read_bytes() == before


def test_assets_are_partitioned_per_source():
    for asset in (raw_pdfs, page_text, clean_chunks):
        assert set(asset.partitions_def.get_partition_keys()) >= {"nist", "ietf"}


def test_chunk_preview_samples_every_document_with_short_text(corpus_lake):
    events = corpus_lake.results["ietf"].asset_materializations_for_node("clean_chunks")
    preview = events[-1].metadata["preview"]
    rows = [record.data for record in preview.records]
    assert {row["doc_id"] for row in rows} == {f"ietf/{name}" for name in IETF_GOOD}  # every document, not 2
    assert max(sum(1 for r in rows if r["doc_id"] == doc) for doc in {r["doc_id"] for r in rows}) <= 2
    assert all(len(row["text"]) <= 48 for row in rows)
    assert [column.type for column in preview.schema.columns] == ["string", "int", "int", "string"]
