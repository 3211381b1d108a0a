"""The page-text stage on real PDFs: known text on known pages, reading order, bad input, OCR, incremental reuse."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pymupdf
import pytest

from cpt_assets.lib.lake import sha256_file
from cpt_assets.lib.pdf import (
    NO_TEXT_LAYER,
    extract_pages,
    extract_source,
    inspect_pdf,
    ocr_problem,
    sniff,
    tessdata_dir,
)
from cpt_assets.lib.types import Page, PageFailure, RawDocument

needs_tesseract = pytest.mark.skipif(
    tessdata_dir() is None,
    reason="tesseract is not installed (Debian: apt-get install tesseract-ocr tesseract-ocr-eng)",
)


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> dict[tuple[str, str], dict]:
    with open(corpus_dir / "MANIFEST.tsv", newline="") as handle:
        return {(row["folder"], row["file"]): row for row in csv.DictReader(handle, delimiter="\t")}


def raw_for(path: Path, source: str = "test") -> RawDocument:
    """A manifest row for a file, as the fetch stage writes it."""
    return RawDocument(
        doc_id=f"{source}/{path.name}",
        source=source,
        name=path.name,
        status="ok",
        path=str(path),
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
    )


def page_text(pages: list[Page], number: int) -> str:
    return next(p.text for p in pages if p.page_number == number)


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"<!DOCTYPE html>\n<html><body>Access denied</body></html>", "not a PDF: an HTML page saved as .pdf"),
        (b"\n  <html lang='en'><head>", "not a PDF: an HTML page saved as .pdf"),
        (b"PK\x03\x04 a zip archive", "not a PDF: no %PDF header (18 bytes starting with b'PK\\x03\\x04 a zip archi')"),
        (b"junk before the header %PDF-1.7\n", ""),
    ],
)
def test_sniff_classifies_by_bytes(tmp_path, content, reason):
    path = tmp_path / "doc.pdf"
    path.write_bytes(content)
    found = sniff(path)
    assert (found == "") if reason == "" else found.startswith(reason)


@pytest.mark.parametrize(
    ("file", "pages", "error"),
    [
        ("ietf/rfc2119.txt.pdf", 3, ""),
        ("edge/c02-22.pdf", 1, ""),  # an image-only scan opens fine; the page-text stage finds no text
        ("edge/invalid.pdf", 0, "corrupt PDF: MuPDF cannot open it"),
        ("edge/libreoffice-writer-password.pdf", 0, "encrypted PDF: it needs a password to open"),
        ("edge/missing.pdf", 0, "file not found"),
    ],
)
def test_inspect_pdf(corpus_dir, file, pages, error):
    info = inspect_pdf(corpus_dir / file)
    assert info.pages == pages
    assert info.error.startswith(error) and bool(info.error) == bool(error)


def test_inspect_reads_the_title(corpus_dir):
    assert inspect_pdf(corpus_dir / "nist" / "FIPS199.pdf").title.startswith("FIPS 199, Standards for Security")


# ---- text -------------------------------------------------------------------------------------------------------


def test_rfc2119_keywords_on_their_pages(corpus_dir):
    pages, failure = extract_pages(raw_for(corpus_dir / "ietf" / "rfc2119.txt.pdf"))
    assert failure is None
    assert [p.page_number for p in pages] == [1, 2, 3]
    first = page_text(pages, 1)
    assert "Key words for use in RFCs to Indicate Requirement Levels" in first
    assert '1. MUST   This word, or the terms "REQUIRED" or "SHALL", mean that the' in first
    assert "definition is an absolute requirement of the specification." in first
    assert '5. MAY   This word, or the adjective "OPTIONAL", mean that an item is' in page_text(pages, 2)
    assert "sob@harvard.edu" in page_text(pages, 3)
    assert all(p.chars == len(p.text) and p.method == "text" for p in pages)
    assert {(p.doc_id, p.source, p.doc_sha256) for p in pages} == {
        ("test/rfc2119.txt.pdf", "test", sha256_file(corpus_dir / "ietf" / "rfc2119.txt.pdf"))
    }


def test_default_corpus_page_counts_match_the_manifest(corpus_dir, manifest):
    """Every NIST and IETF default PDF yields one Page per page, none fails, and known phrases land on their page."""
    files = sorted((corpus_dir / "nist").glob("*.pdf")) + sorted((corpus_dir / "ietf").glob("*.pdf"))
    raws = [raw_for(f, source=f.parent.name) for f in files]
    result = extract_source(raws)
    assert result.failures == [] and result.documents_extracted == len(files) == 23
    counts: dict[str, int] = {}
    for page in result.pages:
        counts[page.doc_id] = counts.get(page.doc_id, 0) + 1
    assert counts == {f"{f.parent.name}/{f.name}": int(manifest[(f.parent.name, f.name)]["pages"]) for f in files}
    assert result.pages_extracted == sum(counts.values()) == 914
    by_page = {(p.doc_id, p.page_number): " ".join(p.text.split()) for p in result.pages}
    assert "Security Categorization" in by_page[("nist/FIPS199.pdf", 1)]
    assert "The NIST Definition of Cloud Computing" in by_page[("nist/SP800-145.pdf", 1)]
    assert "The Transport Layer Security (TLS) Protocol Version 1.3" in by_page[("ietf/rfc8446.txt.pdf", 1)]


def test_xml2rfc_documents_read_in_line_order(corpus_dir):
    """v3 RFCs (creator xml2rfc) write BCP 14 keywords and links after their line; line order puts them back."""
    raw = raw_for(corpus_dir / "ietf" / "rfc9700.pdf")
    pages, _ = extract_pages(raw)
    assert "Implementers MUST take into account all possible types of attackers" in page_text(pages, 12)
    assert "We would like to thank Brock Allen, Annabelle Richard Backman," in page_text(pages, 46)
    stream, _ = extract_pages(raw, reading_order="stream")
    assert "Implementers MUST take" not in page_text(stream, 12)  # the content stream really is out of order


def make_two_column_pdf(path: Path) -> tuple[str, str]:
    """One page, two columns of numbered sentences; the left column is written first, as authoring tools do."""
    left = " ".join(f"Left sentence {i} reads down the first column." for i in range(1, 9))
    right = " ".join(f"Right sentence {i} continues in the second column." for i in range(1, 9))
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    assert page.insert_textbox(pymupdf.Rect(50, 72, 296, 720), left, fontsize=11) > 0
    assert page.insert_textbox(pymupdf.Rect(316, 72, 562, 720), right, fontsize=11) > 0
    doc.save(path)
    return left, right


def test_two_columns_are_read_column_by_column(tmp_path):
    path = tmp_path / "two-columns.pdf"
    make_two_column_pdf(path)
    pages, failure = extract_pages(raw_for(path))
    assert failure is None
    text = " ".join(pages[0].text.split())
    assert text.index("Left sentence 8 reads") < text.index("Right sentence 1 continues")
    positions = [text.index(f"Left sentence {i} ") for i in range(1, 9)]
    positions += [text.index(f"Right sentence {i} ") for i in range(1, 9)]
    assert positions == sorted(positions)
    # Line order (what sort=True does) would interleave the columns: the reason it is not the default.
    lines, _ = extract_pages(raw_for(path), reading_order="lines")
    first_line = lines[0].text.split("\n")[0]
    assert "Left sentence 1" in first_line and "Right sentence 1" in first_line


def test_line_order_follows_the_page_not_the_stream(tmp_path):
    path = tmp_path / "reversed.pdf"
    doc = pymupdf.open()
    page = doc.new_page()
    for y, line in [(300, "third line"), (100, "first line"), (200, "second line")]:
        page.insert_text((72, y), line)
    page.insert_text((140, 100), "continues")  # a later run on the first line, like a link
    doc.set_metadata({"creator": "xml2rfc 3.26.0"})
    doc.save(path)
    auto, _ = extract_pages(raw_for(path))
    assert auto[0].text == "first line continues\nsecond line\nthird line\n"
    stream, _ = extract_pages(raw_for(path), reading_order="stream")
    assert stream[0].text.split("\n")[:3] == ["third line", "first line", "second line"]


def test_one_line_stub_is_one_short_page(corpus_dir):
    pages, failure = extract_pages(raw_for(corpus_dir / "edge" / "rfc277.txt.pdf"))
    assert failure is None and [p.text.strip() for p in pages] == ["RFC 277 was never issued."]


# ---- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "error"),
    [
        ("edge/c02-22.pdf", NO_TEXT_LAYER),
        ("edge/invalid.pdf", "corrupt PDF: MuPDF cannot open it"),
        ("edge/libreoffice-writer-password.pdf", "encrypted PDF: it needs a password to open"),
    ],
)
def test_unreadable_documents_become_failures(corpus_dir, file, error):
    raw = raw_for(corpus_dir / file)
    pages, failure = extract_pages(raw)
    assert pages == []
    assert failure == PageFailure(doc_id=raw.doc_id, source="test", doc_sha256=raw.sha256, error=failure.error)
    assert failure.error.startswith(error)


def test_failed_raw_rows_carry_their_fetch_error(corpus_dir):
    good = raw_for(corpus_dir / "ietf" / "rfc8174.txt.pdf")
    failed = RawDocument(
        doc_id="test/gone.pdf", source="test", name="gone.pdf", status="failed", error="HTTP 404 Not Found for http://x"
    )
    result = extract_source([failed, good])
    assert result.failures == [PageFailure("test/gone.pdf", "test", "", "HTTP 404 Not Found for http://x")]
    assert [d.status for d in result.documents] == ["failed", "extracted"]
    assert result.documents_failed == 1 and result.pages_extracted == 4


@needs_tesseract
def test_ocr_reads_an_image_only_scan(corpus_dir):
    """With ocr on, the image-only scan's page is recognised by tesseract and marked method 'ocr'."""
    raw = raw_for(corpus_dir / "edge" / "c02-22.pdf")
    pages, failure = extract_pages(raw, ocr=True)
    assert failure is None and len(pages) == 1 and pages[0].method == "ocr"
    assert "tip-toeing" in pages[0].text and "garden" in pages[0].text


def test_ocr_with_a_language_that_is_not_installed_says_which_package(corpus_dir):
    raw = raw_for(corpus_dir / "edge" / "c02-22.pdf")
    pages, failure = extract_pages(raw, ocr=True, ocr_language="xyz")
    assert pages == []
    if tessdata_dir() is None:
        assert failure.error == "OCR requested but tesseract is not installed (apt-get install tesseract-ocr)"
    else:
        assert failure.error == ocr_problem("xyz")
        assert failure.error.startswith("OCR language(s) xyz not installed") and "tesseract-ocr-xyz" in failure.error


# ---- incremental ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_source(tmp_path, corpus_dir) -> list[RawDocument]:
    files = ["ietf/rfc2119.txt.pdf", "ietf/rfc8174.txt.pdf", "edge/libreoffice-writer-password.pdf"]
    for file in files:
        shutil.copy(corpus_dir / file, tmp_path / Path(file).name)
    return [raw_for(tmp_path / Path(file).name) for file in files]


def test_unchanged_documents_are_reused(small_source):
    first = extract_source(small_source)
    assert (first.documents_extracted, first.documents_reused, first.documents_failed) == (2, 0, 1)
    second = extract_source(small_source, first.pages, first.failures)
    assert (second.documents_extracted, second.documents_reused, second.documents_failed) == (0, 2, 1)
    assert second.pages == first.pages and second.failures == first.failures
    assert second.pages_extracted == 0 and second.chars == first.chars > 0


def test_changed_bytes_are_extracted_again(small_source, corpus_dir):
    first = extract_source(small_source)
    target = Path(small_source[0].path)
    shutil.copy(corpus_dir / "ietf" / "rfc9650.pdf", target)  # re-issued under the same name
    raws = [raw_for(target), *small_source[1:]]
    second = extract_source(raws, first.pages, first.failures)
    assert [d.status for d in second.documents] == ["extracted", "reused", "failed"]
    new_pages = [p for p in second.pages if p.doc_id == raws[0].doc_id]
    assert {p.doc_sha256 for p in new_pages} == {raws[0].sha256}
    assert "IS-IS" in page_text(new_pages, 1)


def test_text_layer_failures_are_retried_but_ocr_pages_need_ocr(corpus_dir):
    raw = raw_for(corpus_dir / "edge" / "c02-22.pdf")
    first = extract_source([raw])
    assert first.failures[0].error == NO_TEXT_LAYER
    fake_ocr = [Page(raw.doc_id, raw.source, raw.sha256, 1, "recognised text\n", 16, method="ocr")]
    # OCR'd pages are reused while OCR stays on, and re-read (here: failing again) once it is off.
    assert extract_source([raw], fake_ocr, [], ocr=True).documents_reused == 1
    off = extract_source([raw], fake_ocr, [])
    assert off.documents_reused == 0 and off.failures[0].error == NO_TEXT_LAYER
    # A "no text layer" failure is reused while OCR stays off, and retried once it is on (here the retry fails
    # for want of a language pack, which proves the document was read again without spending seconds on OCR).
    assert extract_source([raw], [], first.failures).failures == first.failures
    retried = extract_source([raw], [], first.failures, ocr=True, ocr_language="xyz")
    assert retried.failures[0].error != NO_TEXT_LAYER and "OCR" in retried.failures[0].error


# ---- extraction verdicts and tables (generated PDFs: cpt_assets_tests.pdf_builders) -----------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from cpt_assets_tests.pdf_builders import build_all

    return build_all(tmp_path_factory.mktemp("built"))


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("The server sends its certificate chain to the client.", 0.0, 0.0),
        ("uint16 cipher_suites<2..2^16-2>; opaque legacy_session_id<0..32>;", 0.0, 0.0),
        ("+--------+-------+\n| RouteId | 13 |\n+--------+-------+", 0.0, 0.0),
        ("see http://www.tik.ee.ethz.ch/~naedele/x.pdf for details", 0.0, 0.0),
        ('7=:/"@ :*|#7 :^+!(7 -\\()= ~*;# &~(-;!; )7/"!- &>(', 0.6, 1.0),
        ("%P\x01HPWFSONFOU\x01IFSF\x01PS\x01IPNF", 0.1, 1.0),  # glyphs with no Unicode mapping
        ("Anno~ncemcnt of a NaIl Facility ~t UCSB", 0.3, 0.7),  # OCR noise
        ("\ue001\ue002\ue003 text", 0.3, 0.6),  # private-use glyphs
    ],
)
def test_garbage_score(text, low, high):
    from cpt_assets.lib.text_quality import score_text

    assert low <= score_text(text).garbage <= high


@pytest.mark.parametrize(
    ("feature", "status", "reason"),
    [
        ("scan", "no_text", NO_TEXT_LAYER),
        ("no_unicode_map", "unreadable", "unreadable text layer: text layer is garbage"),
        ("junk_text", "unreadable", "unreadable text layer: text layer is garbage"),
    ],
)
def test_documents_without_useful_text_are_failures_with_a_verdict(built, feature, status, reason):
    from cpt_assets.lib.pdf import failure_status

    pages, failure = extract_pages(raw_for(built[feature].path))
    assert pages == [] and failure is not None
    assert failure_status(failure) == status and failure.error.startswith(reason)


def test_page_without_text_layer_makes_the_document_partial(built):
    from cpt_assets.lib.pdf import document_status

    pages, failure = extract_pages(raw_for(built["no_text_page"].path))
    assert failure is None
    statuses = [p.status for p in pages]
    assert statuses.count("no_text") == 1 and set(statuses) == {"ok", "no_text"}
    assert pages[statuses.index("no_text")].reason == "no text layer (image only)"
    status, reason = document_status(pages)
    assert status == "partial" and reason == f"1 of {len(pages)} page(s) without a text layer"


def test_real_edge_documents_get_their_verdicts(corpus_dir):
    from cpt_assets.lib.pdf import document_status

    noisy, failure = extract_pages(raw_for(corpus_dir / "edge" / "rfc574.pdf"))
    assert failure is None and document_status(noisy)[0] == "partial" and noisy[0].garbage > 0.12
    stub, failure = extract_pages(raw_for(corpus_dir / "edge" / "rfc277.txt.pdf"))
    assert failure is None and document_status(stub) == ("ok", "")
    clean, _ = extract_pages(raw_for(corpus_dir / "ietf" / "rfc8174.txt.pdf"))
    assert document_status(clean) == ("ok", "") and all(p.garbage == 0.0 for p in clean)


def test_ruled_table_becomes_markdown_rows(built):
    from cpt_assets_tests.pdf_builders import TABLE_ROWS

    pages, _ = extract_pages(raw_for(built["table"].path), tables=True)
    assert pages[0].tables == 1
    text = pages[0].text
    assert "| " + " | ".join(TABLE_ROWS[0]) + " |" in text
    assert "| " + " | ".join(TABLE_ROWS[1]) + " |" in text
    assert text.index(TABLE_ROWS[1][2]) < text.index("| " + " | ".join(TABLE_ROWS[2]))
    plain, _ = extract_pages(raw_for(built["table"].path), tables=False)
    assert plain[0].tables == 0 and "| RouteId" not in plain[0].text


def test_numeric_table_is_dropped_with_a_reason():
    from cpt_assets.lib.pdf import table_markdown

    assert table_markdown([["1", "2.5"], ["3", "4%"]]) == ""
    assert table_markdown([["a", None], ["1", "x|y"]]) == "| a |  |\n| --- | --- |\n| 1 | x\\|y |"
