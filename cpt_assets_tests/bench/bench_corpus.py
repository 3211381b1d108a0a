"""Benchmark of the corpus stages on real PDFs: page text vs a bare pymupdf loop, cleaning/chunking MB/s, refresh.

The page-text stage should cost no more than reading the PDFs does: its goal is at least 0.9x the pages/s of a bare
`pymupdf` loop (open each file, `get_text()` each page) over the same files in the same run. Runs alternate between
the two and the best of `--repeats` is compared, so disk cache and CPU frequency treat both alike. A no-op refresh
(fetch and extract again with nothing changed) should cost a small fraction of the first run: that is what makes a
scheduled refresh cheap.

Run: python -m cpt_assets_tests.bench.bench_corpus [--corpus /work/shared/corpus/scale] [--repeats 3]
Prints numbers; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pymupdf

from cpt_assets.lib.lake import Lake, write_records
from cpt_assets.lib.pdf import extract_source
from cpt_assets.lib.sources import fetch_documents, list_documents
from cpt_assets.lib.types import Page, PageFailure, RawDocument, Source

DEFAULT_CORPUS = Path(os.environ.get("CPT_CORPUS", Path(__file__).resolve().parents[2].parent / "shared" / "corpus"))


def bare_pymupdf_loop(paths: list[Path]) -> tuple[int, int]:
    """The baseline: open each file, get_text() each page. Returns (pages, chars)."""
    pages = chars = 0
    for path in paths:
        with pymupdf.open(path) as doc:
            for page in doc:
                chars += len(page.get_text())
                pages += 1
    return pages, chars


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def refresh(source: Source, lake: Lake) -> dict[str, float]:
    """One raw_pdfs + page_text materialisation as the assets do it: read previous state, fetch, extract, write."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    previous_raw = lake.read_manifest(source.name)
    previous_pages = lake.read_pages(source.name)
    previous_failures = lake.read_page_failures(source.name)
    timings["read_previous"] = time.perf_counter() - started
    t, fetched = timed(fetch_documents, source, list_documents(source), lake.raw_dir(source.name), None, previous_raw)
    timings["fetch"] = t
    t, extracted = timed(extract_source, fetched.rows, previous_pages, previous_failures)
    timings["extract"] = t
    started = time.perf_counter()
    write_records(fetched.rows, RawDocument, lake.manifest_path(source.name))
    write_records(extracted.pages, Page, lake.pages_path(source.name))
    write_records(extracted.failures, PageFailure, lake.page_failures_path(source.name))
    timings["write"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    timings["origins"] = fetched.origins  # type: ignore[assignment]
    timings["reused"] = extracted.documents_reused
    timings["extracted"] = extracted.documents_extracted
    return timings


def bench_cleaning_and_chunking(pages: list[Page]) -> None:
    """Cleaning + chunking MB/s through `chunking.chunk_documents` (cleaning alone if chunking is missing)."""
    megabytes = sum(p.chars for p in pages) / 1e6
    try:
        chunking = importlib.import_module("cpt_assets.lib.chunking")
    except ImportError:
        chunking = None
    if chunking is None or not hasattr(chunking, "chunk_documents"):
        cleaning = importlib.import_module("cpt_assets.lib.cleaning")
        by_doc: dict[str, list[str]] = {}
        for page in sorted(pages, key=lambda p: (p.doc_id, p.page_number)):
            by_doc.setdefault(page.doc_id, []).append(page.text)
        t, _ = timed(lambda: [cleaning.clean_document(texts) for texts in by_doc.values()])
        print(f"cleaning only (no chunking module): {megabytes:.2f} M chars in {t:.2f}s = {megabytes / t:.2f} MB/s")
        return
    from cpt_assets.lib.base_model import default_tokenizer_dir, load_tokenizer

    tokenizer = load_tokenizer(default_tokenizer_dir())
    result = chunking.chunk_documents(chunking.group_pages(pages), tokenizer)
    phases = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    print(
        f"cleaning+chunking: {megabytes:.2f} M chars -> {len(result.chunks)} chunks, {result.tokens} tokens "
        f"in {result.seconds:.2f}s = {result.mb_per_s:.2f} MB/s ({phases})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS / "scale", help="folder of PDFs")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; best is compared")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        lake = Lake(tmp)
        source = Source(name="bench", kind="pdf_folder", location=args.corpus.resolve())
        files = list_documents(source)
        print(f"corpus: {args.corpus} ({len(files)} PDFs, {sum(f.path.stat().st_size for f in files) / 1e6:.1f} MB)")

        # (3) first materialisation vs a no-op refresh.
        first = refresh(source, lake)
        again = refresh(source, lake)
        print(
            f"first run:  {first['total']:.2f}s (fetch {first['fetch']:.2f}s, extract {first['extract']:.2f}s, "
            f"write {first['write']:.2f}s) origins {first['origins']}"
        )
        print(
            f"no-op refresh: {again['total']:.3f}s (read {again['read_previous']:.3f}s, fetch {again['fetch']:.3f}s, "
            f"extract {again['extract']:.3f}s, write {again['write']:.3f}s) origins {again['origins']}, "
            f"{again['reused']} documents reused, {again['extracted']} re-extracted"
        )
        print(f"refresh / first run: {again['total'] / first['total']:.3f}")

        # (1) page-text stage vs a bare pymupdf loop over the same stored files.
        raws = lake.read_manifest(source.name)
        paths = [Path(r.path) for r in raws if r.status == "ok"]
        ours, bare = [], []
        result = None
        for _ in range(max(1, args.repeats)):
            t, (pages, _chars) = timed(bare_pymupdf_loop, paths)
            bare.append(pages / t)
            t, result = timed(extract_source, raws)
            ours.append(result.pages_extracted / t)
        assert result is not None
        print(
            f"page text: {result.pages_extracted} pages, {result.chars / 1e6:.2f} M chars, "
            f"{result.documents_failed} failed documents"
        )
        print(f"  bare pymupdf loop: best {max(bare):.0f} pages/s (median {statistics.median(bare):.0f})")
        print(f"  extract_source:    best {max(ours):.0f} pages/s (median {statistics.median(ours):.0f})")
        median_ratio = statistics.median(ours) / statistics.median(bare)
        print(f"  ratio (goal >= 0.9): best {max(ours) / max(bare):.3f}, median {median_ratio:.3f}")

        # (2) cleaning + chunking throughput.
        bench_cleaning_and_chunking(result.pages)


if __name__ == "__main__":
    main()
