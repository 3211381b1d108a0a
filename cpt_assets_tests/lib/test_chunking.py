"""Sentence splitting of standards text and token-sized chunks, measured with the real SmolLM2 tokenizer."""

from __future__ import annotations

import hashlib
import json

import pymupdf
import pytest

from cpt_assets.lib.chunking import (
    STANDARDS_ABBREVIATIONS,
    ChunkingConfig,
    chunk_documents,
    count_tokens,
    group_pages,
    load_splitter,
    paragraph_spans,
    save_splitter,
    sentence_spans,
    split_sentences,
    splitter_hash,
    train_sentence_splitter,
)
from cpt_assets.lib.cleaning import clean_document
from cpt_assets.lib.dedup import NearDuplicateIndex, mark_near_duplicates, text_fingerprint
from cpt_assets.lib.types import Page

REAL_DOCS = ("ietf/rfc8446.txt.pdf", "nist/SP800-145.pdf", "nist/FIPS199.pdf")


def make_pages(doc_id: str, texts: list[str], source: str = "test") -> list[Page]:
    return [Page(doc_id, source, f"sha-{doc_id}", i + 1, text, len(text)) for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def real_pages(corpus_dir) -> dict[str, list[Page]]:
    pages = {}
    for name in REAL_DOCS:
        with pymupdf.open(corpus_dir / name) as doc:
            pages[name] = make_pages(name, [page.get_text("text") for page in doc], source=name.split("/")[0])
    return pages


@pytest.fixture(scope="module")
def splitter(real_pages):
    texts = [clean_document([p.text for p in pages]).text for pages in real_pages.values()]
    return train_sentence_splitter(texts, max_chars=400_000)


# ---- config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_tokens": 0}, "target_tokens must be > 0, got 0"),
        ({"min_tokens": 600}, r"min_tokens must be in \[0, target_tokens=512\], got 600"),
        ({"min_tokens": -1}, r"min_tokens must be in \[0, target_tokens=512\], got -1"),
        ({"max_tokens": 256}, "max_tokens must be >= target_tokens=512, got 256"),
        ({"splitter_max_chars": 0}, "splitter_max_chars must be > 0, got 0"),
        ({"verify_sample": -2}, "verify_sample must be >= 0, got -2"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkingConfig(**kwargs)


def test_config_hash_tracks_every_setting() -> None:
    base = ChunkingConfig()
    assert base.config_hash() == ChunkingConfig().config_hash()
    assert base.config_hash() != ChunkingConfig(target_tokens=256).config_hash()
    from cpt_assets.lib.cleaning import CleaningConfig

    assert base.config_hash() != ChunkingConfig(cleaning=CleaningConfig(dehyphenate=False)).config_hash()
    assert base.config_hash() != ChunkingConfig(quality=None).config_hash()


# ---- sentences ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),  # expected sentences joined by " | "
    [
        # "4.2." ends the reference and the sentence: the next word starts a new sentence
        (
            "See clause 4.2. The MUST keyword is defined in RFC 2119.",
            "See clause 4.2. | The MUST keyword is defined in RFC 2119.",
        ),
        # section numbers never split inside
        (
            "Section 3.1.4 describes the format. It is mandatory.",
            "Section 3.1.4 describes the format. | It is mandatory.",
        ),
        (
            "It is defined in Section 4.2.1. of RFC 8446 for TLS.",
            "It is defined in Section 4.2.1. of RFC 8446 for TLS.",
        ),
        # abbreviations
        (
            "The values (e.g. 0x0303) are fixed. Implementations MUST check them.",
            "The values (e.g. 0x0303) are fixed. | Implementations MUST check them.",
        ),
        (
            "Some values (e.g., TLS 1.3) are fixed, i.e. they never change.",
            "Some values (e.g., TLS 1.3) are fixed, i.e. they never change.",
        ),
        ("As shown in Fig. 3, the client sends a ClientHello.", "As shown in Fig. 3, the client sends a ClientHello."),
        ("See Sec. 4.2 for details.", "See Sec. 4.2 for details."),
        ("Smith et al. describe the attack. It works.", "Smith et al. describe the attack. | It works."),
        (
            "According to 44 U.S.C. § 3551 the agency is responsible.",
            "According to 44 U.S.C. § 3551 the agency is responsible.",
        ),
        ("See NIST SP 800-53 Rev. 4 for the controls.", "See NIST SP 800-53 Rev. 4 for the controls."),
        (
            "The server MUST abort the handshake. The client MAY retry.",
            "The server MUST abort the handshake. | The client MAY retry.",
        ),
        # a blank line always ends a sentence (a heading has no period); a heading keeps its number
        (
            "4.1.3. Server Hello\n\nThe server will send this message.",
            "4.1.3. Server Hello | The server will send this message.",
        ),
        (
            "4.1.3. Server Hello The server will send this message.",
            "4.1.3. Server Hello The server will send this message.",
        ),
    ],
)
def test_split_sentences_on_standards_text(splitter, text: str, expected: str) -> None:
    assert " | ".join(split_sentences(text, splitter)) == expected


def test_splitter_learns_abbreviations_and_keeps_seeds(splitter) -> None:
    abbreviations = splitter._params.abbrev_types
    assert {"e.g", "i.e", "fig", "sec", "u.s.c", "al"} <= abbreviations
    assert STANDARDS_ABBREVIATIONS <= abbreviations


def test_splitter_save_load_round_trip(splitter, tmp_path) -> None:
    path = save_splitter(splitter, tmp_path / "punkt.json")
    loaded = load_splitter(path)
    text = "See Sec. 4.2 for details, e.g. the HelloRetryRequest. The client MAY retry."
    assert split_sentences(text, loaded) == split_sentences(text, splitter)
    assert splitter_hash(loaded) == splitter_hash(splitter)
    assert sorted(json.loads(path.read_text())) == ["abbrev_types", "collocations", "ortho_context", "sent_starters"]


def test_load_splitter_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_splitter(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not a saved Punkt splitter"):
        load_splitter(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  a b\n\n c \n \n\nd\n", ["a b", "c", "d"]),
        ("one\ntwo", ["one\ntwo"]),
        ("", []),
    ],
)
def test_paragraph_spans(text: str, expected: list[str]) -> None:
    assert [text[a:b] for a, b in paragraph_spans(text)] == expected


def test_sentence_spans_start_and_end_on_text(splitter) -> None:
    text = "  First sentence here.  Second one follows.\n\n  Third in a new paragraph.  "
    spans = sentence_spans(text, splitter)
    assert [text[a:b] for a, b in spans] == ["First sentence here.", "Second one follows.", "Third in a new paragraph."]


# ---- chunks -------------------------------------------------------------------------------------------------------


def test_real_documents_chunk_within_bounds(real_pages, tokenizer, splitter) -> None:
    config = ChunkingConfig(target_tokens=256, min_tokens=32, max_tokens=384)
    result = chunk_documents(real_pages, tokenizer, splitter, config)
    assert result.token_counts_verified
    assert len(result.chunks) > 100
    ids = tokenizer([c.text for c in result.chunks], add_special_tokens=False)["input_ids"]
    for chunk, token_ids in zip(result.chunks, ids, strict=True):
        assert chunk.n_tokens == len(token_ids)  # exact, from the real tokenizer
        assert config.min_tokens <= chunk.n_tokens <= config.max_tokens
        assert chunk.chunk_id == hashlib.sha256(chunk.text.encode("utf-8")).hexdigest()
        assert chunk.n_chars == len(chunk.text)
        assert chunk.text == chunk.text.strip()
    assert sum(c.n_tokens <= config.target_tokens for c in result.chunks) >= 0.9 * len(result.chunks)
    assert result.tokens == sum(c.n_tokens for c in result.chunks)
    assert result.removed_lines["header_footer"] > 300
    assert result.dropped_pages["toc"] >= 3
    assert {d.doc_id for d in result.documents} == set(REAL_DOCS)
    assert result.mb_per_s > 0
    assert set(result.timings) == {"clean", "split", "tokenize", "filter"}


def test_chunks_never_cross_documents(real_pages, tokenizer, splitter) -> None:
    result = chunk_documents(real_pages, tokenizer, splitter, ChunkingConfig(target_tokens=256, max_tokens=384))
    cleaned = {doc_id: clean_document([p.text for p in pages]).text for doc_id, pages in real_pages.items()}
    for chunk in result.chunks:
        assert chunk.text in cleaned[chunk.doc_id]
        others = [text for doc_id, text in cleaned.items() if doc_id != chunk.doc_id]
        assert not any(chunk.text in text for text in others)
        assert chunk.source == chunk.doc_id.split("/")[0]
        assert chunk.doc_sha256 == f"sha-{chunk.doc_id}"
    for doc_id in real_pages:
        indexes = sorted(
            [c.chunk_index for c in result.chunks if c.doc_id == doc_id]
            + [d.chunk_index for d in result.dropped if d.doc_id == doc_id]
        )
        assert indexes == list(range(len(indexes)))


def test_over_long_sentence_split_at_token_boundaries(tokenizer, splitter) -> None:
    words = " ".join(f"field{i} carries value{i}" for i in range(900))  # one "sentence" of ~5,000 tokens
    pages = {"t/long": make_pages("t/long", [words + "."])}
    config = ChunkingConfig(target_tokens=200, min_tokens=10, max_tokens=300, quality=None)
    result = chunk_documents(pages, tokenizer, splitter, config)
    assert len(result.chunks) >= 20
    for chunk in result.chunks:
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) == chunk.n_tokens <= 300
    assert " ".join(c.text for c in result.chunks) == words + "."  # cut at spaces, nothing lost


def test_long_table_split_at_line_breaks(tokenizer, splitter) -> None:
    rows = "\n".join(f"| TLS_CIPHER_{i:04d}   | 0x{i:04X}   | RFC 8446   |" for i in range(400))
    pages = {"t/table": make_pages("t/table", [rows])}
    config = ChunkingConfig(target_tokens=200, min_tokens=10, max_tokens=300, quality=None)
    result = chunk_documents(pages, tokenizer, splitter, config)
    assert len(result.chunks) > 5
    for chunk in result.chunks:
        assert chunk.n_tokens <= 300
        assert chunk.text.startswith("| TLS_CIPHER_")  # every chunk starts at a row
        assert chunk.n_tokens == len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"])


def test_exact_duplicates_dropped_with_reason(tokenizer, splitter) -> None:
    text = (
        "The key words MUST, MUST NOT, REQUIRED, SHALL, SHALL NOT, SHOULD, SHOULD NOT, RECOMMENDED, MAY, and "
        "OPTIONAL in this document are to be interpreted as described in BCP 14 when, and only when, they appear "
        "in all capitals, as shown here."
    )
    pages = {
        "t/a": make_pages("t/a", [text]),
        "t/b": make_pages("t/b", [text.upper()]),  # equal after normalisation
        "t/c": make_pages("t/c", ["An unrelated sentence about certificate revocation lists and OCSP stapling."]),
    }
    result = chunk_documents(pages, tokenizer, splitter, ChunkingConfig(min_tokens=5))
    assert [c.doc_id for c in result.chunks] == ["t/a", "t/c"]
    assert [(d.doc_id, d.reason) for d in result.dropped] == [("t/b", "duplicate")]
    assert result.dropped_counts == {"duplicate": 1}


def test_incremental_run_dedups_against_earlier_chunks(tokenizer, splitter) -> None:
    text = "Servers MUST ignore unrecognized extensions and MUST NOT abort the handshake because of them."
    first = chunk_documents({"t/old": make_pages("t/old", [text])}, tokenizer, splitter, ChunkingConfig(min_tokens=5))
    seen = {text_fingerprint(c.text): c.chunk_id for c in first.chunks}
    index = NearDuplicateIndex()
    mark_near_duplicates(first.chunks, index=index)
    pages = {"t/new": make_pages("t/new", [text]), "t/rev": make_pages("t/rev", [text.replace("Servers", "Clients")])}
    result = chunk_documents(pages, tokenizer, splitter, ChunkingConfig(min_tokens=5), seen=seen, near_index=index)
    assert [(d.doc_id, d.reason) for d in result.dropped] == [("t/new", "duplicate")]
    assert [(c.doc_id, c.near_duplicate_of) for c in result.chunks] == [("t/rev", first.chunks[0].chunk_id)]


def test_near_duplicates_reported_not_dropped(tokenizer, splitter) -> None:
    base = (
        "Organizations should use container-specific host operating systems to reduce attack surfaces. "
        "A container-specific host OS is a minimalist OS explicitly designed to only run containers, with all "
        "other services and functionality disabled, and with read-only file systems and other hardening "
        "practices employed. When using a container-specific host OS, attack surfaces are typically much smaller "
        "than they would be with a general-purpose host OS, so there are fewer opportunities to attack."
    )
    revised = base.replace("much smaller", "far smaller")
    pages = {"t/1": make_pages("t/1", [base]), "t/2": make_pages("t/2", [revised])}
    result = chunk_documents(pages, tokenizer, splitter, ChunkingConfig(min_tokens=5))
    assert len(result.chunks) == 2
    first, second = result.chunks
    assert first.near_duplicate_of is None
    assert second.near_duplicate_of == first.chunk_id
    assert result.near_duplicates == 1


def test_short_and_empty_documents_dropped(tokenizer, splitter) -> None:
    pages = {
        "t/empty": make_pages("t/empty", ["", "  \n"]),
        "t/short": make_pages("t/short", ["Too short to train on."]),
    }
    result = chunk_documents(pages, tokenizer, splitter, ChunkingConfig(min_tokens=32))
    assert result.chunks == []
    assert sorted((d.doc_id, d.reason) for d in result.dropped) == [("t/empty", "empty"), ("t/short", "too_short")]
    assert result.dropped_counts == {"empty": 1, "too_short": 1}


def test_small_tail_merged_into_previous_chunk(tokenizer, splitter) -> None:
    sentences = [f"Sentence number {i} explains one more property of the handshake protocol." for i in range(40)]
    pages = {"t/tail": make_pages("t/tail", [" ".join(sentences)])}
    config = ChunkingConfig(target_tokens=100, min_tokens=40, max_tokens=200, quality=None)
    result = chunk_documents(pages, tokenizer, splitter, config)
    assert all(c.n_tokens >= 40 for c in result.chunks)
    assert result.dropped == []
    assert result.chunks[-1].text.endswith("Sentence number 39 explains one more property of the handshake protocol.")


def test_splitter_trained_when_none_given(tokenizer) -> None:
    pages = {
        "t/x": make_pages("t/x", ["The server MUST abort the handshake, e.g. on a bad record. The client MAY retry."])
    }
    result = chunk_documents(pages, tokenizer, None, ChunkingConfig(min_tokens=1))
    assert result.splitter is not None
    assert "train_splitter" in result.timings
    assert len(result.chunks) == 1


def test_count_tokens_matches_tokenizer(tokenizer) -> None:
    texts = ["", "RFC 8446 section 4.2.1", "  leading spaces\n\nand paragraphs"]
    expected = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert count_tokens(tokenizer, texts) == expected


def test_group_pages_orders_documents_and_pages() -> None:
    pages = make_pages("b", ["p1", "p2"]) + make_pages("a", ["q1"])
    grouped = group_pages(reversed(pages))
    assert list(grouped) == ["a", "b"]
    assert [p.page_number for p in grouped["b"]] == [1, 2]


def test_blocks_are_never_cut_inside(tokenizer) -> None:
    from cpt_assets.lib.chunking import is_block

    block = "\n".join(f"  field{k}  INTEGER (0..255),  -- value {k}. See note." for k in range(12))
    prose = " ".join(f"Sentence number {k} explains the protocol field." for k in range(40))
    text = f"{prose}\n\n{block}\n\n{prose}"
    assert is_block(block) and not is_block(prose) and not is_block("\u2022 one\n\u2022 two")
    page = Page(doc_id="s/a", source="s", doc_sha256="h", page_number=1, text=text, chars=len(text))
    config = ChunkingConfig(target_tokens=128, min_tokens=8, max_tokens=512, quality=None)
    result = chunk_documents({"s/a": [page]}, tokenizer, config=config)
    cleaned_block = "\n".join(line.strip() for line in block.split("\n"))  # the common indentation goes
    assert sum(cleaned_block in c.text for c in result.chunks) == 1
