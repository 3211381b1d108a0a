import os

import duckdb
import pytest

from cpt_assets.lib.lake import Lake, atomic_path, read_records, write_records
from cpt_assets.lib.types import Chunk, RawDocument


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
