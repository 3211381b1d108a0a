"""The sources registry and the raw-PDF stage, on real PDFs and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from cpt_assets.lib.lake import sha256_file
from cpt_assets.lib.sources import (
    FetchConfig,
    MirrorIndex,
    fetch_documents,
    list_documents,
    load_registry,
    registry_path,
)
from cpt_assets.lib.types import DocumentRef, Source
from cpt_assets_tests.lib.http_server import serve_folder

IETF_SUBSET = ["rfc2119.txt.pdf", "rfc8174.txt.pdf", "rfc9650.pdf"]
NO_RETRY = FetchConfig(retries=0, max_workers=1, timeout_s=10)


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> dict[tuple[str, str], dict]:
    """MANIFEST.tsv rows keyed by (folder, file)."""
    with open(corpus_dir / "MANIFEST.tsv", newline="") as handle:
        return {(row["folder"], row["file"]): row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    monkeypatch.delenv("CPT_MIRROR", raising=False)
    monkeypatch.delenv("CPT_SOURCES", raising=False)


def write_url_list(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "url", "sha256"])
        writer.writerows(rows)
    return path


def url_source(tmp_path: Path, rows: list[tuple[str, str, str]], name: str = "web") -> Source:
    return Source(name=name, kind="url_list", location=write_url_list(tmp_path / f"{name}.csv", rows))


# ---- registry ---------------------------------------------------------------------------------------------------


def test_load_registry_resolves_locations_and_mirror(tmp_path):
    (tmp_path / "conf").mkdir()
    registry_file = tmp_path / "conf" / "sources.yaml"
    registry_file.write_text(
        "mirror: ../mirror\n"
        "sources:\n"
        "  - name: local-pdfs\n    kind: pdf_folder\n    location: pdfs\n    ocr: true\n    description: scans\n"
        "  - name: web_1\n    kind: url_list\n    location: /abs/list.csv\n"
    )
    registry = load_registry(registry_file)
    assert registry.names == ["local-pdfs", "web_1"]
    local, web = registry.sources
    assert local == Source("local-pdfs", "pdf_folder", tmp_path / "conf" / "pdfs", ocr=True, description="scans")
    assert web.location == Path("/abs/list.csv") and web.ocr is False
    assert registry.mirror == tmp_path / "mirror"
    assert registry.get("web_1") is web
    with pytest.raises(KeyError, match="no source named 'nope'.*local-pdfs, web_1"):
        registry.get("nope")


def test_mirror_env_overrides_and_empty_env_disables(tmp_path, monkeypatch):
    registry_file = tmp_path / "sources.yaml"
    registry_file.write_text("mirror: m\nsources: []\n")
    monkeypatch.setenv("CPT_MIRROR", str(tmp_path / "elsewhere"))
    assert load_registry(registry_file).mirror == tmp_path / "elsewhere"
    monkeypatch.setenv("CPT_MIRROR", "")
    assert load_registry(registry_file).mirror is None
    monkeypatch.delenv("CPT_MIRROR")
    assert load_registry(registry_file).mirror == tmp_path / "m"


def test_default_registry_is_the_repo_file_with_nist_and_ietf(corpus_dir, monkeypatch):
    assert registry_path() == Path(__file__).resolve().parents[2] / "sources.yaml"
    registry = load_registry()
    assert registry.names[:2] == ["nist", "ietf"]
    assert registry.mirror == corpus_dir
    assert [len(list_documents(s)) for s in registry.sources[:2]] == [11, 12]
    monkeypatch.setenv("CPT_SOURCES", str(corpus_dir / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        load_registry()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("  - {name: a, kind: ftp_site, location: x}", "unknown kind 'ftp_site'"),
        ("  - {name: a, kind: pdf_folder, location: x}\n  - {name: a, kind: url_list, location: y}", "duplicate name"),
        ("  - {name: NIST, kind: pdf_folder, location: x}", r"invalid name 'NIST'.*\[a-z0-9_-\]\+"),
        ("  - {name: a/b, kind: pdf_folder, location: x}", "invalid name 'a/b'"),
        ("  - {name: a, kind: pdf_folder}", "missing location"),
        ("  - {kind: pdf_folder, location: x}", "entry 1: missing name"),
        ("  - {name: a, kind: pdf_folder, location: x, locaton: y}", r"unknown key\(s\) \['locaton'\]"),
        ("  - {name: a, kind: pdf_folder, location: x, ocr: 'yes'}", "'ocr' must be true or false"),
        ("  - just-a-string", "expected a mapping"),
    ],
)
def test_bad_registry_entries_name_the_file_and_entry(tmp_path, entries, message):
    registry_file = tmp_path / "bad.yaml"
    registry_file.write_text(f"sources:\n{entries}\n")
    with pytest.raises(ValueError, match=message) as raised:
        load_registry(registry_file)
    assert str(registry_file) in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources: {name: a}", "'sources' must be a list"),
        ("- a\n- b", "expected a mapping"),
        ("sources: [\n", "not valid YAML"),
        ("mirrors: x\nsources: []", r"unknown top-level key\(s\) \['mirrors'\]"),
    ],
)
def test_bad_registry_shapes(tmp_path, text, message):
    registry_file = tmp_path / "bad.yaml"
    registry_file.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_registry(registry_file)


# ---- listing ----------------------------------------------------------------------------------------------------


def test_pdf_folder_lists_pdfs_case_insensitively_sorted(tmp_path):
    for name in ["b.pdf", "A.PDF", "notes.txt", "c.Pdf"]:
        (tmp_path / name).write_bytes(b"%PDF-1.4")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.pdf").write_bytes(b"%PDF-1.4")
    refs = list_documents(Source("local", "pdf_folder", tmp_path))
    assert [r.name for r in refs] == ["A.PDF", "b.pdf", "c.Pdf"]
    assert refs[0] == DocumentRef(source="local", name="A.PDF", path=tmp_path / "A.PDF")
    assert refs[0].doc_id == "local/A.PDF"


def test_url_list_reads_rows_with_pinned_hashes(manifest):
    refs = list_documents(load_registry().get("ietf"))
    # The default list names exactly the mirror's RFCs, pinned to the mirror's bytes.
    assert {(r.name, r.sha256) for r in refs} == {(f, row["sha256"]) for (d, f), row in manifest.items() if d == "ietf"}
    assert refs[0].url == "https://www.rfc-editor.org/rfc/pdfrfc/rfc2119.txt.pdf"
    assert refs[0].sha256 == "375f9ece2d3df5cf0d6c730cb41af57368b5d0c6739dd0888499477b3b8f2e77"


@pytest.mark.parametrize(
    ("csv_text", "error", "message"),
    [
        ("name,url\n../x.pdf,http://h/x.pdf\n", ValueError, "'../x.pdf' is a path that escapes the source folder"),
        ("name,url\n/etc/passwd,http://h/x.pdf\n", ValueError, "a path that escapes the source folder"),
        ("name,url\nsub/x.pdf,http://h/x.pdf\n", ValueError, "a path that escapes the source folder"),
        ("name,url\n..,http://h/x.pdf\n", ValueError, "a path that escapes the source folder"),
        ("name,url\na.pdf,http://h/a\na.pdf,http://h/b\n", ValueError, "row 3: duplicate name 'a.pdf'"),
        ("name,url,sha256\na.pdf,http://h/a,abc123\n", ValueError, "sha256 'abc123' is not 64 hex digits"),
        ("file,link\na.pdf,http://h/a\n", ValueError, "needs columns name,url"),
        ("name,url\n,http://h/a\n", ValueError, "row 2: empty name"),
    ],
)
def test_bad_url_lists(tmp_path, csv_text, error, message):
    location = tmp_path / "list.csv"
    location.write_text(csv_text)
    with pytest.raises(error, match=message) as raised:
        list_documents(Source("web", "url_list", location))
    assert "'web'" in str(raised.value)


@pytest.mark.parametrize(
    ("kind", "location", "message"),
    [
        ("pdf_folder", "missing-folder", "source 'gone': PDF folder .*missing-folder does not exist"),
        ("url_list", "missing.csv", "source 'gone': URL list .*missing.csv does not exist"),
    ],
)
def test_missing_locations_raise_naming_source_and_path(tmp_path, kind, location, message):
    with pytest.raises(FileNotFoundError, match=message):
        list_documents(Source("gone", kind, tmp_path / location))


# ---- mirror -----------------------------------------------------------------------------------------------------


def test_mirror_index_finds_files_by_sha256(corpus_dir, manifest):
    mirror = MirrorIndex(corpus_dir)
    row = manifest[("ietf", "rfc2119.txt.pdf")]
    assert mirror.lookup(row["sha256"]) == corpus_dir / "ietf" / "rfc2119.txt.pdf"
    assert mirror.lookup(row["sha256"].upper()) == corpus_dir / "ietf" / "rfc2119.txt.pdf"
    assert manifest[("scale", "SP800-84.pdf")]["sha256"] in mirror
    assert mirror.lookup("0" * 64) is None and mirror.lookup(None) is None
    pdfs_in_manifest = {r["sha256"] for r in manifest.values() if r["file"].lower().endswith(".pdf")}
    assert set(mirror.index) == pdfs_in_manifest


def test_missing_mirror_indexes_nothing(tmp_path):
    assert len(MirrorIndex(tmp_path / "absent")) == 0


# ---- fetching: mirror and HTTP ----------------------------------------------------------------------------------


def test_fetch_from_mirror_then_cached(tmp_path, corpus_dir, manifest):
    source = load_registry().get("ietf")
    refs = list_documents(source)
    dest = tmp_path / "raw"
    first = fetch_documents(source, refs, dest, MirrorIndex(corpus_dir))
    assert first.origins == {"mirror": len(refs)} and first.ok == len(refs) == 12 and first.bytes_downloaded == 0
    for row in first.rows:
        expected = manifest[("ietf", row.name)]
        assert row.status == "ok" and row.error == ""
        assert row.sha256 == row.pinned_sha256 == expected["sha256"] == sha256_file(dest / row.name)
        assert (row.pages, row.bytes) == (int(expected["pages"]), int(expected["bytes"]))
        assert row.path == str(dest / row.name) and not row.hash_mismatch
    assert first.bytes_copied == sum(row.bytes for row in first.rows)

    second = fetch_documents(source, refs, dest, MirrorIndex(corpus_dir), previous=first.rows)
    assert second.origins == {"cached": len(refs)} and second.bytes_copied == 0
    assert [(r.sha256, r.pages) for r in second.rows] == [(r.sha256, r.pages) for r in first.rows]


@pytest.fixture
def ietf_server(corpus_dir):
    with serve_folder(corpus_dir / "ietf") as server:
        yield server


@pytest.fixture
def ietf_web_source(tmp_path, ietf_server, manifest) -> Source:
    rows = [(n, ietf_server.url(n), manifest[("ietf", n)]["sha256"]) for n in IETF_SUBSET]
    return url_source(tmp_path, rows)


def test_download_then_skip_what_exists(tmp_path, ietf_server, ietf_web_source, manifest):
    refs = list_documents(ietf_web_source)
    dest = tmp_path / "raw"
    first = fetch_documents(ietf_web_source, refs, dest, mirror=None)
    sizes = {n: int(manifest[("ietf", n)]["bytes"]) for n in IETF_SUBSET}
    assert first.origins == {"download": 3} and first.ok == 3
    assert first.bytes_downloaded == sum(sizes.values())
    assert {r.name: r.pages for r in first.rows} == {n: int(manifest[("ietf", n)]["pages"]) for n in IETF_SUBSET}
    assert (
        first.rows[2].title
        == "RFC 9650: Revision to Registration Procedures for IS-IS Neighbor Link-Attribute Bit Values"
    )
    assert not list(dest.glob("*.part"))
    served = len(ietf_server.requests)

    second = fetch_documents(ietf_web_source, refs, dest, mirror=None, previous=first.rows)
    assert second.origins == {"cached": 3} and second.bytes_downloaded == 0
    assert len(ietf_server.requests) == served  # nothing was asked of the server


def test_broken_download_resumes_on_the_next_run(tmp_path, ietf_server, ietf_web_source, manifest):
    name, cut = "rfc9650.pdf", 20_000
    size = int(manifest[("ietf", name)]["bytes"])
    refs = [r for r in list_documents(ietf_web_source) if r.name == name]
    dest = tmp_path / "raw"
    ietf_server.cut_once(name, cut)

    first = fetch_documents(ietf_web_source, refs, dest, config=NO_RETRY)
    (row,) = first.rows
    assert row.status == "failed" and f"stopped at {cut} of {size} bytes" in row.error
    assert f"{cut} bytes kept in {name}.part" in row.error
    assert not (dest / name).exists() and (dest / f"{name}.part").stat().st_size == cut

    second = fetch_documents(ietf_web_source, refs, dest, config=NO_RETRY, previous=first.rows)
    (row,) = second.rows
    assert row.status == "ok" and row.origin == "download"
    assert second.bytes_downloaded == size - cut < size
    assert ietf_server.requests[-1].range == f"bytes={cut}-" and ietf_server.requests[-1].status == 206
    assert row.sha256 == manifest[("ietf", name)]["sha256"] == sha256_file(dest / name)
    assert not (dest / f"{name}.part").exists()


def test_broken_download_resumes_within_one_run(tmp_path, ietf_server, ietf_web_source, manifest):
    name = "rfc8174.txt.pdf"
    size = int(manifest[("ietf", name)]["bytes"])
    refs = [r for r in list_documents(ietf_web_source) if r.name == name]
    ietf_server.cut_once(name, 1000)
    result = fetch_documents(ietf_web_source, refs, tmp_path / "raw", config=FetchConfig(retries=1))
    assert result.rows[0].status == "ok" and result.rows[0].sha256 == manifest[("ietf", name)]["sha256"]
    assert result.bytes_downloaded == size  # 1000 bytes, then the rest: nothing fetched twice
    assert [(r.range, r.status) for r in ietf_server.requests] == [(None, 200), ("bytes=1000-", 206)]


def test_a_complete_part_file_is_finished_without_downloading(tmp_path, corpus_dir, ietf_server, ietf_web_source):
    """A crash between the last byte and the rename leaves a whole .part: the server's 416 confirms it is complete."""
    name = "rfc8174.txt.pdf"
    dest = tmp_path / "raw"
    dest.mkdir()
    shutil.copy(corpus_dir / "ietf" / name, dest / f"{name}.part")
    refs = [r for r in list_documents(ietf_web_source) if r.name == name]
    result = fetch_documents(ietf_web_source, refs, dest, config=NO_RETRY)
    assert result.rows[0].status == "ok" and result.rows[0].origin == "download" and result.bytes_downloaded == 0
    assert [(r.status, r.body_bytes) for r in ietf_server.requests] == [(416, 0)]
    assert not (dest / f"{name}.part").exists() and result.rows[0].sha256 == sha256_file(dest / name)


def test_server_ignoring_range_gets_a_whole_new_download(tmp_path, ietf_server, ietf_web_source, manifest):
    name = "rfc2119.txt.pdf"
    size = int(manifest[("ietf", name)]["bytes"])
    refs = [r for r in list_documents(ietf_web_source) if r.name == name]
    dest = tmp_path / "raw"
    ietf_server.cut_once(name, 500)
    assert fetch_documents(ietf_web_source, refs, dest, config=NO_RETRY).rows[0].status == "failed"
    ietf_server.ignore_range = True
    result = fetch_documents(ietf_web_source, refs, dest, config=NO_RETRY)
    assert result.rows[0].status == "ok" and result.bytes_downloaded == size
    assert ietf_server.requests[-1].status == 200 and ietf_server.requests[-1].range == "bytes=500-"
    assert sha256_file(dest / name) == manifest[("ietf", name)]["sha256"]


def test_unreachable_documents_are_failed_rows_with_reasons(tmp_path, ietf_server, manifest):
    good = ("rfc2119.txt.pdf", ietf_server.url("rfc2119.txt.pdf"), manifest[("ietf", "rfc2119.txt.pdf")]["sha256"])
    missing_url = ietf_server.url("rfc0000.pdf")
    source = url_source(
        tmp_path,
        [
            good,
            ("gone.pdf", missing_url, ""),
            ("ftp.pdf", "ftp://example.org/x.pdf", ""),
            ("refused.pdf", "http://127.0.0.1:9/x.pdf", ""),
            ("nowhere.pdf", "", "0" * 64),
        ],
    )
    result = fetch_documents(source, list_documents(source), tmp_path / "raw", mirror=None, config=NO_RETRY)
    rows = {r.name: r for r in result.rows}
    assert rows["rfc2119.txt.pdf"].status == "ok"
    assert rows["gone.pdf"].status == "failed" and rows["gone.pdf"].error == f"HTTP 404 Not Found for {missing_url}"
    assert rows["ftp.pdf"].error.startswith("bad URL 'ftp://example.org/x.pdf'")
    assert rows["refused.pdf"].error.startswith("cannot reach http://127.0.0.1:9/x.pdf")
    assert "no URL in the list and no mirror copy" in rows["nowhere.pdf"].error
    assert all(rows[n].path is None and rows[n].sha256 is None for n in ["gone.pdf", "ftp.pdf", "refused.pdf"])
    assert len(result.failed) == 4 and result.ok == 1


def test_hash_mismatch_is_kept_and_reported_not_refetched(tmp_path, ietf_server, manifest):
    name = "rfc8174.txt.pdf"
    wrong = manifest[("ietf", "rfc2119.txt.pdf")]["sha256"]  # a publisher re-issued the file
    source = url_source(tmp_path, [(name, ietf_server.url(name), wrong)])
    refs = list_documents(source)
    first = fetch_documents(source, refs, tmp_path / "raw", mirror=None)
    (row,) = first.rows
    assert row.status == "ok" and row.hash_mismatch
    assert row.pinned_sha256 == wrong and row.sha256 == manifest[("ietf", name)]["sha256"]
    assert first.hash_mismatches == [row]
    second = fetch_documents(source, refs, tmp_path / "raw", mirror=None, previous=first.rows)
    assert second.origins == {"cached": 1} and second.bytes_downloaded == 0 and second.rows[0].hash_mismatch


def test_an_html_page_downloaded_instead_of_the_pdf_is_fetched_again(tmp_path, corpus_dir):
    site = tmp_path / "site"
    site.mkdir()
    (site / "doc.pdf").write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
    with serve_folder(site) as server:
        source = url_source(tmp_path, [("doc.pdf", server.url("doc.pdf"), "")])
        first = fetch_documents(source, list_documents(source), tmp_path / "raw", config=NO_RETRY)
        assert first.rows[0].status == "failed" and "HTML page saved as .pdf" in first.rows[0].error
        assert first.rows[0].origin == "download" and first.rows[0].path == str(tmp_path / "raw" / "doc.pdf")
        shutil.copy(corpus_dir / "ietf" / "rfc2119.txt.pdf", site / "doc.pdf")  # the site works again
        second = fetch_documents(source, list_documents(source), tmp_path / "raw", config=NO_RETRY, previous=first.rows)
        assert second.rows[0].status == "ok" and second.rows[0].origin == "download" and second.rows[0].pages == 3


def test_mirror_is_preferred_over_download(tmp_path, corpus_dir, ietf_server, ietf_web_source):
    result = fetch_documents(
        ietf_web_source, list_documents(ietf_web_source), tmp_path / "raw", MirrorIndex(corpus_dir)
    )
    assert result.origins == {"mirror": 3} and ietf_server.requests == []


# ---- fetching: local folders and bad files ----------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path, corpus_dir) -> Path:
    """Two good PDFs and four bad files, as users' folders have them."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in ["rfc2119.txt.pdf", "rfc8174.txt.pdf"]:
        shutil.copy(corpus_dir / "ietf" / name, folder / name)
    shutil.copy(corpus_dir / "edge" / "invalid.pdf", folder / "invalid.pdf")
    shutil.copy(corpus_dir / "edge" / "libreoffice-writer-password.pdf", folder / "locked.pdf")
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "login.pdf").write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n")
    return folder


def test_bad_files_become_failed_rows_with_distinct_reasons(tmp_path, messy_folder):
    source = Source("inbox", "pdf_folder", messy_folder)
    result = fetch_documents(source, list_documents(source), tmp_path / "raw")
    rows = {r.name: r for r in result.rows}
    assert {n for n, r in rows.items() if r.status == "ok"} == {"rfc2119.txt.pdf", "rfc8174.txt.pdf"}
    reasons = {n: r.error for n, r in rows.items() if r.status == "failed"}
    assert reasons["empty.pdf"] == "empty file (0 bytes)"
    assert reasons["login.pdf"].startswith("not a PDF: an HTML page saved as .pdf")
    assert reasons["invalid.pdf"].startswith("corrupt PDF: MuPDF cannot open it")
    assert reasons["locked.pdf"] == "encrypted PDF: it needs a password to open"
    assert len(set(reasons.values())) == 4
    assert all(r.sha256 == sha256_file(messy_folder / r.name) for r in rows.values())
    assert rows["rfc2119.txt.pdf"].pages == 3 and rows["locked.pdf"].pages == 0


def test_folder_copies_are_independent_of_the_source_folder(tmp_path, messy_folder, corpus_dir):
    source = Source("inbox", "pdf_folder", messy_folder)
    dest = tmp_path / "raw"
    first = fetch_documents(source, list_documents(source), dest)
    assert first.origins == {"folder": 6}
    original = sha256_file(dest / "rfc2119.txt.pdf")

    second = fetch_documents(source, list_documents(source), dest, previous=first.rows)
    assert second.origins == {"cached": 6} and second.bytes_copied == 0

    shutil.copy(corpus_dir / "ietf" / "rfc9650.pdf", messy_folder / "rfc2119.txt.pdf")  # the user edits a file
    (messy_folder / "rfc8174.txt.pdf").unlink()  # and deletes another
    (dest / "stray.pdf").write_bytes(b"%PDF-1.4 left from an older run")
    third = fetch_documents(source, list_documents(source), dest, previous=second.rows)
    rows = {r.name: r for r in third.rows}
    assert rows["rfc2119.txt.pdf"].origin == "folder" and rows["rfc2119.txt.pdf"].title.startswith("RFC 9650")
    assert rows["rfc2119.txt.pdf"].sha256 != original
    assert "rfc8174.txt.pdf" not in rows and (dest / "rfc8174.txt.pdf").exists()  # left alone
    assert third.orphans == ["rfc8174.txt.pdf", "stray.pdf"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s must be > 0, got 0"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"chunk_bytes": 0}, "chunk_bytes must be > 0"),
        ({"max_workers": 0}, "max_workers must be >= 1"),
    ],
)
def test_fetch_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FetchConfig(**kwargs)
