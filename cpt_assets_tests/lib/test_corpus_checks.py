import pytest

from cpt_assets.lib.corpus_checks import (
    documents_accounted_for,
    documents_with_useful_text,
    duplicate_chunks,
    empty_chunks,
    unreadable_documents,
)
from cpt_assets.lib.types import Chunk, Page, PageFailure, RawDocument


def raw(name, status="ok", error=""):
    return RawDocument(doc_id=f"s/{name}", source="s", name=name, status=status, error=error)


def page(name):
    return Page(doc_id=f"s/{name}", source="s", doc_sha256="h", page_number=1, text="t", chars=1)


def chunk(chunk_id, text="text", tokens=3):
    return Chunk(chunk_id, "s/a", "s", "h", 0, text, tokens, len(text))


@pytest.mark.parametrize(
    ("manifest", "pages", "failures", "passed"),
    [
        ([raw("a"), raw("b")], [page("a"), page("b")], [], True),
        ([raw("a"), raw("b", "failed", "encrypted")], [page("a")], [PageFailure("s/b", "s", "", "encrypted")], True),
        ([raw("a"), raw("b")], [page("a")], [], False),
        ([raw("a"), raw("b")], [page("a")], [PageFailure("s/b", "s", "", "")], False),
    ],
)
def test_documents_accounted_for(manifest, pages, failures, passed):
    assert documents_accounted_for(manifest, pages, failures)[0] is passed


def test_unreadable_documents_lists_reasons():
    passed, _, details = unreadable_documents([raw("a"), raw("b", "failed", "not a PDF")])
    assert not passed and details == {"s/b": "not a PDF"}
    assert unreadable_documents([raw("a")])[0]


@pytest.mark.parametrize(
    ("chunks", "empty_ok", "dup_ok"),
    [
        ([chunk("1"), chunk("2")], True, True),
        ([chunk("1", text="  "), chunk("2")], False, True),
        ([chunk("1", tokens=0)], False, True),
        ([chunk("1"), chunk("1")], True, False),
    ],
)
def test_chunk_checks(chunks, empty_ok, dup_ok):
    assert empty_chunks(chunks)[0] is empty_ok
    assert duplicate_chunks(chunks)[0] is dup_ok


@pytest.mark.parametrize(
    ("documents", "passed", "bad"),
    [
        ([("s/a.pdf", "ok", ""), ("s/b.pdf", "partial", "1 of 3 page(s) without a text layer")], True, []),
        ([("s/a.pdf", "ok", ""), ("s/scan.pdf", "no_text", "no text layer")], False, ["s/scan.pdf"]),
        ([("s/junk.pdf", "unreadable", "text layer is garbage")], False, ["s/junk.pdf"]),
        ([], True, []),
    ],
)
def test_documents_with_useful_text(documents, passed, bad):
    ok, description, details = documents_with_useful_text(documents)
    assert ok is passed
    assert sorted(details.get("documents", {})) == bad
    if not passed:
        assert "no useful text" in description


def test_sources_included_names_the_missing_sources_and_why():
    from cpt_assets.lib.corpus_checks import sources_included

    assert sources_included({}) == (True, "every source", {})
    passed, description, details = sources_included({"ietf": "no clean_chunks materialisation"})
    assert not passed and description == "missing: ietf"
    assert details == {"missing": {"ietf": "no clean_chunks materialisation"}}
