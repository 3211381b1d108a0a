"""Quality bench of the corpus stages against ground truth: what page text + cleaning + chunking recover.

PDFs are built with pymupdf from known text (`cpt_assets_tests.pdf_builders`), one layout feature each: running
heads, roman and arabic page numbers, print slugs, two and three columns, a German TOC, a back-of-book index, ASN.1
and ABNF blocks (in a proportional and a monospace document), a ruled table, hyphenated line ends and en-dash breaks,
a page with no text layer, an image-only scan, a font without a Unicode map, a junk text layer, and an ETSI
deliverable (legal page, IPR, trademark and modal-verbs notices, document history page). Per feature it
prints word and bigram F1 of the cleaned text against the known text, furniture strings left, blocks intact (line
breaks kept, relative indentation kept, inside one chunk), table rows kept on one line, and the extraction verdict.

Real documents: the files of ../shared/corpus/edge have known verdicts (an image-only scan, not a PDF, an encrypted
PDF, a noisy OCR layer, a one-line stub), and the RFC text PDFs of ../shared/corpus/ietf have known furniture (every
page ends in "[Page N]" and starts with the RFC's running head); no plain-text ground truth of their body is at hand
offline, so for them the bench counts furniture left, not F1.

Run: python -m cpt_assets_tests.bench.bench_corpus_quality [--corpus ../shared/corpus]
Prints a table; asserts nothing (the tests in cpt_assets_tests/lib assert the per-feature results).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from cpt_assets.lib import pdf
from cpt_assets.lib.cleaning import clean_document
from cpt_assets.lib.lake import sha256_file
from cpt_assets.lib.pdf import extract_pages
from cpt_assets.lib.types import RawDocument
from cpt_assets_tests.pdf_builders import (
    BuiltPdf,
    bigram_f1,
    block_indented,
    block_intact,
    build_all,
    furniture_left,
    table_rows_kept,
    word_f1,
)

DEFAULT_CORPUS = Path(os.environ.get("CPT_CORPUS", Path(__file__).resolve().parents[2].parent / "shared" / "corpus"))
EDGE_EXPECTED = {
    "c02-22.pdf": "no_text",
    "invalid.pdf": "unreadable",
    "libreoffice-writer-password.pdf": "unreadable",
    "rfc574.pdf": "partial",  # a scan whose OCR text layer is noisy (readable, with ~15% junk tokens)
    "rfc277.txt.pdf": "ok",  # one line of text, but real text
}


def raw_for(path: Path) -> RawDocument:
    return RawDocument(doc_id=f"bench/{path.name}", source="bench", name=path.name, status="ok", path=str(path),
                       sha256=sha256_file(path), bytes=path.stat().st_size)  # fmt: skip


def verdict(path: Path) -> tuple[str, str, list]:
    """(status, reason, pages) from the page-text stage; the status falls back to extracted/failed on code that
    records no verdict (the bench ran on the code before verdicts existed, too)."""
    try:
        pages, failure = extract_pages(raw_for(path), tables=True)
    except TypeError:  # the code before tables existed
        pages, failure = extract_pages(raw_for(path))
    if failure is not None:
        status = getattr(pdf, "failure_status", lambda _: "failed")(failure)
        return status, failure.error, pages
    document_status = getattr(pdf, "document_status", None)
    if document_status is None:
        return "extracted", "", pages
    return (*document_status(pages), pages)


def chunk_texts(pages: list, tokenizer) -> list[str]:
    from cpt_assets.lib.chunking import chunk_documents, group_pages

    if not pages:
        return []
    return [c.text for c in chunk_documents(group_pages(pages), tokenizer).chunks]


def score(built: BuiltPdf, tokenizer) -> dict[str, str]:
    status, reason, pages = verdict(built.path)
    text = clean_document([p.text for p in pages]).text if pages else ""
    chunks = chunk_texts(pages, tokenizer) if tokenizer is not None and pages else []
    row = {
        "feature": built.feature,
        "status": status + ("" if status == built.expect_status else f" (want {built.expect_status})"),
        "word_f1": f"{word_f1(text, built.body):.3f}" if built.body else "-",
        "bigram_f1": f"{bigram_f1(text, built.body):.3f}" if built.body else "-",
        "furniture_left": f"{furniture_left(text, built)}/{len(built.furniture)}" if built.furniture else "-",
        "blocks_intact": "-",
        "tables": "-",
        "reason": reason[:60],
    }
    if built.blocks:
        intact = sum(block_intact(text, b) for b in built.blocks)
        indented = sum(block_indented(text, b) for b in built.blocks)
        in_chunk = sum(any(block_intact(c, b) for c in chunks) for b in built.blocks)
        row["blocks_intact"] = f"{intact}/{len(built.blocks)} lines, {indented} indent, {in_chunk} one chunk"
    if built.tables:
        row["tables"] = f"{sum(table_rows_kept(text, t) for t in built.tables) / len(built.tables):.2f} rows"
    return row


def real_rows(corpus: Path) -> list[dict[str, str]]:
    rows = []
    for name, want in EDGE_EXPECTED.items():
        path = corpus / "edge" / name
        if not path.exists():
            continue
        status, reason, _ = verdict(path)
        rows.append({"feature": f"edge/{name}", "status": status + ("" if status == want else f" (want {want})"),
                     "reason": reason[:60]})  # fmt: skip
    for path in sorted((corpus / "ietf").glob("*.txt.pdf")):
        _, _, pages = verdict(path)
        text = clean_document([p.text for p in pages]).text
        page_marks = len(re.findall(r"\[Page \w+\]", text))
        head = pages[1].text.strip().split("\n")[0] if len(pages) > 1 else ""
        heads = text.count(head.strip()) if head.strip() else 0
        rows.append({"feature": f"ietf/{path.name}", "status": "ok", "furniture_left":
                     f"{page_marks} [Page], {heads} heads / {len(pages)} pages"})  # fmt: skip
    return rows


COLUMNS = ["feature", "status", "word_f1", "bigram_f1", "furniture_left", "blocks_intact", "tables", "reason"]


def print_table(rows: list[dict[str, str]]) -> None:
    widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in COLUMNS}
    print(" | ".join(c.ljust(widths[c]) for c in COLUMNS))
    print("-|-".join("-" * widths[c] for c in COLUMNS))
    for row in rows:
        print(" | ".join(row.get(c, "-").ljust(widths[c]) for c in COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the shared corpus (edge/, ietf/)")
    parser.add_argument("--no-chunks", action="store_true", help="skip chunking (no tokenizer needed)")
    args = parser.parse_args()
    tokenizer = None
    if not args.no_chunks:
        from cpt_assets.lib.base_model import default_tokenizer_dir, load_tokenizer

        tokenizer = load_tokenizer(default_tokenizer_dir())
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        rows = [score(built, tokenizer) for built in build_all(Path(tmp)).values()]
    rows += real_rows(args.corpus)
    print_table(rows)


if __name__ == "__main__":
    main()
