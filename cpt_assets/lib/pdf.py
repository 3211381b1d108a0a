"""The page-text stage: PDF bytes to text per page, in reading order, with bad input recorded as data.

pymupdf (MuPDF) is the extractor: it is the fastest well-kept PDF text library and the benchmark baseline.

Reading order. By default a page's text comes in content-stream order (`page.get_text("text")`), which is how the
authoring tool wrote it. Measured on the NIST and IETF corpus (pymupdf 2.0), that order keeps two-column pages
column by column and keeps each table cell's text together, while `get_text("text", sort=True)` reflows the page
line by line: it interleaves table cells and side-by-side columns ("Preserving authorized / The unauthorized / The
unauthorized" on FIPS 199 p.10, SP 800-30 p.66, NISTIR 8183's rotated tables) and is 10-15x slower (26 vs 418
pages/s; pymupdf sorts in Python). Sorting whole blocks by (y, x) interleaves columns the same way, a paragraph at
a time. The one place content order fails is xml2rfc's renderings of v3 RFCs (WeasyPrint/cairo): they write list
labels, links and BCP 14 keywords as separate runs after their line ("Implementers / take into account ... /
MUST"), so documents whose creator is xml2rfc get line order instead: words regrouped into visual lines, which is
right for these single-column documents and costs about 1.6x the plain extraction on those pages only.

Bad input never raises out of this module's stage functions: zero bytes, not a PDF (an HTML page saved as .pdf),
corrupt, encrypted, or no text layer each become a `PageFailure` with a reason a user can act on.

Verdicts. Every page and document gets an extraction verdict (`text_quality`): ok, partial (some pages without
text, unreadable or noisy), no_text (image only) or unreadable (bad bytes, or a text layer that is garbage: a font
without a Unicode map, symbol salad). A document whose text is no use (no_text, unreadable) is a failure row with
its reason, never pages that later vanish as "too_short" chunks.

Tables. pymupdf's table finder (`page.find_tables`) costs 20-100x a page's text extraction, so it runs only on
pages whose text and drawings suggest a ruled table: many short lines (content order writes a cell per line) and
at least a few vector lines or rectangles. A table it finds is written as markdown rows in place of its cells' text;
a table of numbers only is dropped (the page's reason says so).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pymupdf

from cpt_assets.lib.text_quality import Verdict, VerdictConfig, document_verdict, nonspace_chars, page_verdict
from cpt_assets.lib.types import Page, PageFailure, RawDocument

logger = logging.getLogger(__name__)

ReadingOrder = Literal["auto", "stream", "lines"]

# Creators (PDF metadata) whose content stream is out of reading order; "auto" uses line order for them.
LINE_ORDER_CREATORS: tuple[str, ...] = ("xml2rfc",)
NO_TEXT_LAYER = "no text layer (image-only scan); enable ocr for this source"
TESSERACT_MISSING = "OCR requested but tesseract is not installed (apt-get install tesseract-ocr)"
_OCR_ERRORS = (NO_TEXT_LAYER, TESSERACT_MISSING, "OCR ", "no useful text")


class PdfError(ValueError):
    """A file that cannot be read as a PDF; the message is the reason recorded for it."""


class PdfInfo(NamedTuple):
    """What the fetch stage records about a stored file."""

    pages: int
    title: str
    error: str  # "" when the PDF opens


def sniff(path: Path) -> str:
    """Why a file is not a PDF by its bytes ("" when it looks like one): missing, empty, HTML, other."""
    path = Path(path)
    if not path.is_file():
        return f"file not found: {path}"
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if b"%PDF-" in head:  # the header may follow up to 1 KiB of junk (ISO 32000-1, annex H)
        return ""
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in lowered:
        return "not a PDF: an HTML page saved as .pdf (a login, error or redirect page instead of the document)"
    return f"not a PDF: no %PDF header ({size} bytes starting with {head[:16]!r})"


def open_pdf(path: Path) -> pymupdf.Document:
    """Open a PDF for reading, or raise PdfError with the reason (not a PDF, corrupt, encrypted, no pages)."""
    reason = sniff(path)
    if reason:
        raise PdfError(reason)
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as error:  # MuPDF raises FileDataError, RuntimeError, ... for damaged files
        raise PdfError(f"corrupt PDF: MuPDF cannot open it ({error})") from error
    if doc.needs_pass:
        doc.close()
        raise PdfError("encrypted PDF: it needs a password to open")
    if doc.page_count == 0:
        doc.close()
        raise PdfError("corrupt PDF: it has no pages")
    return doc


def inspect_pdf(path: Path) -> PdfInfo:
    """Page count and title of a stored file, or the reason it is not a readable PDF."""
    try:
        doc = open_pdf(path)
    except PdfError as error:
        return PdfInfo(0, "", str(error))
    with doc:
        title = ((doc.metadata or {}).get("title") or "").strip()
        return PdfInfo(doc.page_count, title, "")


# ---- OCR -------------------------------------------------------------------------------------------------------


@functools.cache
def tessdata_dir() -> str | None:
    """Tesseract's language-data folder, or None when tesseract is not installed."""
    try:
        return pymupdf.get_tessdata()
    except RuntimeError:
        return None


def ocr_problem(language: str) -> str:
    """Why OCR in `language` ("eng", "eng+deu") cannot run here, or "" when it can."""
    folder = tessdata_dir()
    if folder is None:
        return TESSERACT_MISSING
    missing = [lang for lang in language.split("+") if not (Path(folder) / f"{lang}.traineddata").is_file()]
    if missing:
        packages = " ".join(f"tesseract-ocr-{lang}" for lang in missing)
        return f"OCR language(s) {', '.join(missing)} not installed in {folder} (apt-get install {packages})"
    return ""


# ---- text ------------------------------------------------------------------------------------------------------


def _line_order_text(textpage: pymupdf.TextPage) -> str:
    """Words regrouped into visual lines (top to bottom, left to right) for out-of-order content streams."""
    words = textpage.extractWORDS()  # (x0, y0, x1, y1, word, block, line, word_no)
    if not words:
        return ""
    words.sort(key=lambda w: ((w[1] + w[3]) / 2, w[0]))
    lines: list[list[tuple]] = []
    current: list[tuple] = []
    centre = height = 0.0
    for word in words:
        word_centre, word_height = (word[1] + word[3]) / 2, word[3] - word[1]
        if current and abs(word_centre - centre) <= max(2.0, 0.5 * min(word_height, height)):
            current.append(word)
            continue
        if current:
            lines.append(current)
        current, centre, height = [word], word_centre, word_height
    lines.append(current)
    out = []
    for line in lines:
        line.sort(key=lambda w: w[0])
        text = line[0][4]
        for prev, word in zip(line, line[1:], strict=False):
            # Runs that touch (a link followed by its comma) join without a space.
            gap = word[0] - prev[2]
            text += ("" if gap < 0.15 * (word[3] - word[1]) else " ") + word[4]
        out.append(text)
    return "\n".join(out) + "\n"


def _uses_line_order(doc: pymupdf.Document, reading_order: ReadingOrder) -> bool:
    if reading_order != "auto":
        return reading_order == "lines"
    creator = ((doc.metadata or {}).get("creator") or "").lower()
    return any(name in creator for name in LINE_ORDER_CREATORS)


def _failure(raw: RawDocument, error: str) -> PageFailure:
    return PageFailure(doc_id=raw.doc_id, source=raw.source, doc_sha256=raw.sha256 or "", error=error)


NO_USEFUL_TEXT = "no useful text"
UNREADABLE_TEXT = "unreadable text layer"


def failure_status(failure: PageFailure) -> str:
    """The extraction verdict of a failed document: no_text (nothing to read without OCR) or unreadable."""
    return "no_text" if failure.error.startswith((NO_TEXT_LAYER, NO_USEFUL_TEXT, *_OCR_ERRORS)) else "unreadable"


_NUMERIC_CELL_RE = re.compile(r"^[\d\s.,%+\-\u2212()/:]*$")
TABLE_MIN_SHORT_LINES = 6  # a page needs this many short lines (<= 30 characters) to be searched for tables
TABLE_MIN_DRAWINGS = 4  # ...and this many vector paths (rules, cell borders)


def _table_candidate(page: pymupdf.Page, text: str) -> bool:
    """Whether a page's layout suggests a ruled table (cheap tests first; the table finder is expensive)."""
    lines = [line for line in text.split("\n") if line.strip()]
    short = sum(len(line.strip()) <= 30 for line in lines)
    if short < TABLE_MIN_SHORT_LINES or short < 0.3 * len(lines):
        return False
    return len(page.get_cdrawings() or []) >= TABLE_MIN_DRAWINGS


def table_markdown(rows: list[list[str | None]]) -> str:
    """Table rows as markdown ("| a | b |", a rule under the first row); "" for a table of numbers only."""
    cells = [[" ".join((cell or "").split()).replace("|", "\\|") for cell in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells or all(_NUMERIC_CELL_RE.match(cell) for row in cells for cell in row):
        return ""
    width = max(len(row) for row in cells)
    lines = ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in cells]
    lines.insert(1, "|" + " --- |" * width)
    return "\n".join(lines)


def _text_with_tables(page: pymupdf.Page) -> tuple[str, int, int] | None:
    """The page's text with each table found written as markdown in its place.

    Returns:
        (text, tables written, tables of numbers dropped), or None when the finder finds no table.
    """
    try:
        found = page.find_tables()
        tables = found.tables if found is not None else []
    except Exception:  # the finder fails on some damaged drawings; the plain text stands
        return None
    if not tables:
        return None
    boxes = [pymupdf.Rect(t.bbox) for t in tables]
    markdown = [table_markdown(t.extract()) for t in tables]
    emitted: set[int] = set()
    parts = []
    blocks: list[tuple[Any, ...]] = page.get_text("blocks")  # pyright: ignore[reportAssignmentType]
    for block in blocks:
        if block[6] != 0:
            continue
        centre = pymupdf.Point((block[0] + block[2]) / 2, (block[1] + block[3]) / 2)
        inside = next((i for i, box in enumerate(boxes) if centre in box), None)
        if inside is None:
            parts.append(block[4] if block[4].endswith("\n") else block[4] + "\n")
        elif inside not in emitted:
            emitted.add(inside)
            if markdown[inside]:
                parts.append("\n" + markdown[inside] + "\n\n")
    written = sum(1 for i in emitted if markdown[i])
    return "".join(parts), written, len(emitted) - written


def extract_pages(
    raw: RawDocument,
    path: Path | str | None = None,
    ocr: bool = False,
    ocr_language: str = "eng",
    ocr_dpi: int = 300,
    reading_order: ReadingOrder = "auto",
    tables: bool = False,
    verdicts: VerdictConfig | None = None,
) -> tuple[list[Page], PageFailure | None]:
    """Text of every page of one document, or the reason there is none.

    Args:
        raw: the manifest row (its doc_id, source and sha256 label the pages; a failed row fails here too).
        path: the stored file; default `raw.path`.
        ocr: OCR pages that have no text layer (needs tesseract's language data).
        ocr_language: tesseract language(s), e.g. "eng" or "eng+deu".
        ocr_dpi: rendering resolution for OCR.
        reading_order: "auto" (content order; line order for known out-of-order creators), "stream" or "lines".
        tables: write tables found by pymupdf's table finder as markdown rows (on pages whose layout suggests one).
            Off by default: the layout gate still lets through most NIST pages, and the finder then cost the stage
            ~15x (measured on nist/: 12 vs 212 pages/s); on when a source needs it.
        verdicts: thresholds of the extraction verdict.

    Returns:
        (pages, None) on success, one Page per page, 1-based, empty pages included, each with its verdict;
        ([], failure) when the document is unreadable or has no useful text (the failure carries the verdict).
    """
    if raw.status != "ok":
        return [], _failure(raw, raw.error or "the raw document was not fetched")
    if path is None and not raw.path:
        return [], _failure(raw, "the manifest row names no stored file")
    try:
        doc = open_pdf(Path(path if path is not None else str(raw.path)))
    except PdfError as error:
        return [], _failure(raw, str(error))
    with doc:
        line_order = _uses_line_order(doc, reading_order)
        texts: list[str] = []
        table_counts: list[tuple[int, int]] = []
        try:
            for page in doc:
                text = _line_order_text(page.get_textpage()) if line_order else str(page.get_text("text"))
                counts = (0, 0)
                if tables and not line_order and _table_candidate(page, text):
                    found = _text_with_tables(page)
                    if found is not None:
                        text, counts = found[0], found[1:]
                texts.append(text)
                table_counts.append(counts)
        except Exception as error:  # a damaged content stream on one page
            return [], _failure(raw, f"corrupt PDF: page {len(texts) + 1} cannot be read ({error})")
        methods = ["text"] * len(texts)
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if len(blank) == len(texts) and not ocr:
            return [], _failure(raw, NO_TEXT_LAYER)
        if blank and ocr:
            problem = ocr_problem(ocr_language)
            if problem:
                return [], _failure(raw, problem)
            for i in blank:
                page = doc[i]
                if not page.get_images(full=False) and len(blank) < len(texts):
                    continue  # a blank page in a text document: nothing to recognise
                try:
                    textpage = page.get_textpage_ocr(
                        language=ocr_language, dpi=ocr_dpi, full=True, tessdata=tessdata_dir()
                    )
                    texts[i] = str(page.get_text("text", textpage=textpage))
                except Exception as error:
                    return [], _failure(raw, f"OCR failed on page {i + 1}: {error}")
                methods[i] = "ocr"
            if not any(text.strip() for text in texts):
                return [], _failure(raw, "OCR found no text on any page (blank or unreadable scan)")
        page_verdicts = [
            page_verdict(text, bool(doc[i].get_images(full=False)) if not text.strip() else False, verdicts)
            for i, text in enumerate(texts)
        ]
    verdict = document_verdict([(v.chars, v) for v in page_verdicts], verdicts)
    if verdict.status in ("no_text", "unreadable"):
        return [], _failure(raw, f"{_VERDICT_PREFIX[verdict.status]}: {verdict.reason}")
    pages = [
        Page(
            doc_id=raw.doc_id,
            source=raw.source,
            doc_sha256=raw.sha256 or "",
            page_number=number,
            text=text,
            chars=len(text),
            method=method,
            status=page.status,
            reason=_page_reason(page, dropped),
            garbage=page.garbage,
            tables=written,
        )
        for number, (text, method, page, (written, dropped)) in enumerate(
            zip(texts, methods, page_verdicts, table_counts, strict=True), start=1
        )
    ]
    return pages, None


_VERDICT_PREFIX = {"no_text": NO_USEFUL_TEXT, "unreadable": UNREADABLE_TEXT}


def _page_reason(verdict: Verdict, numeric_tables: int) -> str:
    reasons = [verdict.reason] if verdict.reason and verdict.status != "ok" else []
    if numeric_tables:
        reasons.append(f"{numeric_tables} table(s) of numbers only dropped")
    return "; ".join(reasons)


def document_status(pages: list[Page], chars: list[int] | None = None) -> tuple[str, str]:
    """A document's verdict (status, reason) from its stored pages (failed documents have a PageFailure instead).

    `chars`: the pages' non-space characters where the caller has counted them already.
    """
    counts = chars if chars is not None else [nonspace_chars(p.text) for p in pages]
    verdict = document_verdict(
        [(n, Verdict(p.status, p.reason, p.garbage)) for n, p in zip(counts, pages, strict=True)]  # type: ignore[arg-type]
    )
    return verdict.status, verdict.reason


# ---- the stage -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentText:
    """Per-document summary of one page-text run (a metadata table row)."""

    doc_id: str
    status: Literal["extracted", "reused", "failed"]
    pages: int
    chars: int
    ocr_pages: int
    seconds: float
    error: str = ""
    verdict: str = ""  # extraction verdict: ok, partial, no_text, unreadable
    reason: str = ""  # why the verdict is not ok
    text_coverage: float = 0.0  # share of pages with a text layer
    garbage: float = 0.0  # share of the document's non-space characters that are not text
    tables: int = 0  # tables written as markdown rows


@dataclass
class ExtractResult:
    """Pages and failures of one source, with what the run cost."""

    pages: list[Page]  # every page of every readable document, reused ones included, in manifest order
    failures: list[PageFailure]  # one per unreadable document
    documents: list[DocumentText] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def documents_extracted(self) -> int:
        return sum(d.status == "extracted" for d in self.documents)

    @property
    def documents_reused(self) -> int:
        return sum(d.status == "reused" for d in self.documents)

    @property
    def documents_failed(self) -> int:
        return len(self.failures)

    @property
    def verdicts(self) -> dict[str, int]:
        """Documents per extraction verdict (ok, partial, no_text, unreadable)."""
        counts: dict[str, int] = {}
        for d in self.documents:
            counts[d.verdict] = counts.get(d.verdict, 0) + 1
        return counts

    @property
    def pages_extracted(self) -> int:
        """Pages read from PDFs in this run (reused pages not counted)."""
        return sum(d.pages for d in self.documents if d.status == "extracted")

    @property
    def chars(self) -> int:
        return sum(page.chars for page in self.pages)

    @property
    def ocr_pages(self) -> int:
        return sum(page.method == "ocr" for page in self.pages)

    @property
    def empty_pages(self) -> int:
        return sum(not page.text.strip() for page in self.pages)

    @property
    def pages_per_second(self) -> float:
        """Extraction throughput over the pages read in this run."""
        return self.pages_extracted / self.seconds if self.seconds > 0 else 0.0


def _reusable_failure(failure: PageFailure | None, sha: str | None) -> bool:
    # Failures about the text layer or OCR depend on settings and installed tools, so they are retried;
    # corrupt or encrypted bytes stay so until the bytes change.
    return failure is not None and bool(sha) and failure.doc_sha256 == sha and not failure.error.startswith(_OCR_ERRORS)


def extract_source(
    raws: Iterable[RawDocument],
    previous_pages: Iterable[Page] = (),
    previous_failures: Iterable[PageFailure] = (),
    ocr: bool = False,
    ocr_language: str = "eng",
    reading_order: ReadingOrder = "auto",
) -> ExtractResult:
    """Page text for one source's manifest, re-extracting only documents whose bytes changed.

    A document whose sha256 equals the sha256 its previous pages were made from is reused as is (unless those
    pages were OCR'd and OCR is now off). Failed manifest rows become failures carrying the fetch error.

    Args:
        raws: the source's manifest rows.
        previous_pages: the pages of the last run (empty on the first).
        previous_failures: the failures of the last run.
        ocr: OCR pages without a text layer.
        ocr_language: tesseract language(s).
        reading_order: see `extract_pages`.

    Returns:
        Pages, failures, per-document summaries and timing.
    """
    started = time.perf_counter()
    old_pages: dict[str, list[Page]] = defaultdict(list)
    for page in previous_pages:
        old_pages[page.doc_id].append(page)
    old_failures = {failure.doc_id: failure for failure in previous_failures}

    pages: list[Page] = []
    failures: list[PageFailure] = []
    documents: list[DocumentText] = []
    for raw in raws:
        doc_started = time.perf_counter()
        previous = old_pages.get(raw.doc_id, [])
        if (
            raw.status == "ok"
            and previous
            and all(p.doc_sha256 == raw.sha256 for p in previous)
            and (ocr or all(p.method != "ocr" for p in previous))
        ):
            previous = sorted(previous, key=lambda p: p.page_number)
            pages.extend(previous)
            documents.append(_summary(raw, "reused", previous, doc_started))
            continue
        new_pages: list = []
        if raw.status == "ok" and _reusable_failure(old_failures.get(raw.doc_id), raw.sha256):
            failure = old_failures[raw.doc_id]
        else:
            new_pages, failure = extract_pages(raw, ocr=ocr, ocr_language=ocr_language, reading_order=reading_order)
        if failure is not None:
            failures.append(failure)
            documents.append(
                DocumentText(
                    raw.doc_id,
                    "failed",
                    0,
                    0,
                    0,
                    time.perf_counter() - doc_started,
                    failure.error,
                    verdict=failure_status(failure),
                    reason=failure.error,
                )  # fmt: skip
            )
            logger.warning("%s: %s", raw.doc_id, failure.error)
            continue
        pages.extend(new_pages)
        documents.append(_summary(raw, "extracted", new_pages, doc_started))
    result = ExtractResult(pages=pages, failures=failures, documents=documents, seconds=time.perf_counter() - started)
    logger.info(
        "%d documents extracted, %d reused, %d failed; %d pages read in %.2fs (%.0f pages/s)",
        result.documents_extracted,
        result.documents_reused,
        result.documents_failed,
        result.pages_extracted,
        result.seconds,
        result.pages_per_second,
    )
    return result


def _summary(
    raw: RawDocument, status: Literal["extracted", "reused"], pages: list[Page], started: float
) -> DocumentText:
    counts = [nonspace_chars(p.text) for p in pages]
    verdict, reason = document_status(pages, counts)
    chars = sum(counts)
    return DocumentText(
        doc_id=raw.doc_id,
        status=status,
        pages=len(pages),
        chars=sum(p.chars for p in pages),
        ocr_pages=sum(p.method == "ocr" for p in pages),
        seconds=time.perf_counter() - started,
        verdict=verdict,
        reason=reason,
        text_coverage=round(sum(bool(p.text.strip()) for p in pages) / len(pages), 4) if pages else 0.0,
        garbage=round(sum(p.garbage * n for p, n in zip(pages, counts, strict=True)) / chars, 4) if chars else 0.0,
        tables=sum(p.tables for p in pages),
    )
