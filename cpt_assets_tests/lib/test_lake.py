import os

import duckdb
import pytest

from cpt_assets.lib.lake import (
    Lake,
    atomic_path,
    content_version,
    read_records,
    read_scored_blocks,
    write_records,
    write_scored_blocks,
)
from cpt_assets.lib.types import Chunk, RawDocument, ScoredBlocks


def raw(name: str, status: str = "ok") -> RawDocument:
    return RawDocument(doc_id=f"s/{name}", source="s", name=name, status=status, bytes=10, pages=2)


def test_records_round_trip_with_typed_empty_tables(tmp_path):
    path = tmp_path / "m.parquet"
    write_records([], RawDocument, path)
    assert read_records(path, RawDocument) == []
    assert duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall() == [(0,)]
    rows = [raw("a.pdf"), raw("b.pdf", "failed")]
    write_records(rows, RawDocument, path)
    assert read_records(path, RawDocument) == rows


def test_failed_write_keeps_the_good_file(tmp_path):
    path = tmp_path / "m.parquet"
    write_records([raw("a.pdf")], RawDocument, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_folder_swap_is_atomic(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("2")
        raise RuntimeError("crash")
    assert (target / "w").read_text() == "1"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("3")
    assert (target / "w").read_text() == "3"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_duckdb_views_span_every_partition(tmp_path):
    lake = Lake(tmp_path)
    for source, n in (("a", 2), ("b", 3)):
        chunks = [Chunk(f"{source}{i}", f"{source}/d", source, "h", i, "text", 5, 4) for i in range(n)]
        write_records(chunks, Chunk, lake.chunks_path(source))
    connection = lake.connect()
    assert connection.execute("SELECT source, count(*) FROM chunks GROUP BY 1 ORDER BY 1").fetchall() == [
        ("a", 2),
        ("b", 3),
    ]
    catalog = lake.write_catalog()
    with duckdb.connect(str(catalog), read_only=True) as persisted:
        assert persisted.execute("SELECT sum(n_tokens) FROM chunks").fetchone() == (25,)
    assert lake.sources_with("chunks") == ["a", "b"]


# ---- versioned model artefacts (issue #8) ---------------------------------------------------------------------
def test_versions_keep_older_paths_and_latest_moves(tmp_path):
    lake = Lake(tmp_path / "lake")
    paths = []
    for version, text in (("v1", "first"), ("v2", "second")):
        with atomic_path(lake.version_dir("eval", version)) as tmp:
            tmp.mkdir()
            (tmp / "report.json").write_text(text)
        lake.publish_latest("eval", version)
        paths.append(lake.version_dir("eval", version) / "report.json")
    assert paths[0].read_text() == "first"  # the older materialisation's path still holds its files
    assert (lake.eval_dir / "report.json").read_text() == "second"
    assert lake.eval_dir.resolve() == lake.version_dir("eval", "v2").resolve()
    assert os.readlink(lake.eval_dir) == os.path.join("versions", "v2")  # relative: the lake can be moved
    assert lake.versions("eval") == ["v1", "v2"]
    lake.publish_latest("eval", "v1")  # pointing back is one atomic rename
    assert (lake.eval_dir / "report.json").read_text() == "first"
    assert sorted(p.name for p in lake.kind_dir("eval").iterdir()) == ["latest", "versions"]  # no temp link left


@pytest.mark.parametrize(
    ("kind", "version", "error", "message"),
    [
        ("eval", "missing", FileNotFoundError, "does not exist"),
        ("tea", "v1", ValueError, "Unknown versioned artefact kind 'tea'"),
        ("gguf", "../x", ValueError, "Bad version id"),
        ("merged", "", ValueError, "Bad version id"),
    ],
)
def test_publish_rejects_bad_versions(tmp_path, kind, version, error, message):
    with pytest.raises(error, match=message):
        Lake(tmp_path).publish_latest(kind, version)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [((1, {"x": 1}), (1, {"x": 1}), True), ((1, {"x": 1}), (1, {"x": 2}), False), (("a",), ("b",), False)],
)
def test_content_version(a, b, same):
    assert (content_version(*a) == content_version(*b)) is same
    assert len(content_version(*a)) == 16


def test_token_blocks_round_trip_and_bad_file(tmp_path):
    from cpt_assets.lib.lake import read_token_blocks, write_token_blocks

    path = write_token_blocks([(5, 6, 0, 7), [8, 0]], tmp_path / "control_blocks.json")
    assert read_token_blocks(path) == [[5, 6, 0, 7], [8, 0]]
    assert read_token_blocks(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text('{"blocks": 3}')
    with pytest.raises(ValueError, match="bad.json is not a token-blocks file"):
        read_token_blocks(tmp_path / "bad.json")


def test_scored_blocks_round_trip_and_bad_file(tmp_path):
    scored = ScoredBlocks(
        model="adapted",
        dtype="float32",
        block_size=4,
        separator_id=0,
        sources=("nist", "ietf"),
        blocks=((5, 6, 0, 7), (8, 0)),
        token_nll=((1.5, 0.25, 3.0), (0.5,)),
        adapter_sha256="ab" * 32,
    )
    path = write_scored_blocks(scored, tmp_path / "scores.json")
    assert read_scored_blocks(path) == scored and scored.tokens == 4
    assert read_scored_blocks(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text('{"model": "adapted"}')
    with pytest.raises(ValueError, match="bad.json is not a scored-blocks file"):
        read_scored_blocks(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="block 0 has 4 tokens but 2 NLL values"):
        ScoredBlocks("adapted", "float32", 4, 0, ("s",), ((1, 2, 3, 4),), ((0.1, 0.2),))


def test_no_lake_file_name_is_spelled_outside_lake_py():
    """lake.py owns every file name under the lake: no other module of the package writes one as a literal."""
    import ast
    from pathlib import Path

    import cpt_assets
    from cpt_assets.lib import lake

    names = {
        value
        for key, value in vars(lake).items()
        if key.isupper() and isinstance(value, str) and ("." in value or value == lake.MODELFILE)
    }
    assert {"cpt_training.json", "adapter_config.json", "verification.json", "imatrix.gguf"} <= names
    package = Path(cpt_assets.__file__).parent
    spelled = [
        f"{path.relative_to(package)}:{node.lineno}: {node.value!r}"
        for path in sorted(package.rglob("*.py"))
        if path != Path(lake.__file__)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert spelled == []
