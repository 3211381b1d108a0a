"""Incremental re-chunking: what changed is chunked, what did not is reused byte for byte."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cpt_assets.lib.base_model import load_tokenizer
from cpt_assets.lib.chunk_refresh import read_state, refresh_chunks, write_state
from cpt_assets.lib.chunking import ChunkingConfig
from cpt_assets.lib.types import Page

SENTENCES = [
    "The key schedule derives traffic secrets from the handshake secret.",
    "Each record is protected with an AEAD algorithm negotiated in the handshake.",
    "Implementations MUST NOT send zero-length fragments of handshake messages.",
    "A server that receives an unknown extension ignores it, see Sec. 4.2 for details.",
]


SMALL_CHUNKS = ChunkingConfig(target_tokens=64, min_tokens=8)
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def pages_for(doc: str, sha: str, variant: int = 0, n_pages: int = 3) -> list[Page]:
    """Pages of distinct prose lines (repeated lines would be removed as running headers)."""
    pages = []
    for number in range(1, n_pages + 1):
        lines = [
            f"{SENTENCES[i % len(SENTENCES)]} The {WORDS[(i + number) % 16]} {WORDS[(i * 3 + len(doc)) % 16]} "
            f"clause of {doc} covers case {WORDS[(i * 5 + number + variant) % 16]} in revision {variant}."
            for i in range(number * 7, number * 7 + 7)
        ]
        text = "\n".join(lines)
        pages.append(Page(f"src/{doc}", "src", sha, number, text, len(text)))
    return pages


@pytest.fixture
def run(tmp_path, tokenizer_dir):
    state_path, splitter_path = tmp_path / "state.json", tmp_path / "punkt.json"
    stored = {"chunks": [], "dropped": []}

    def refresh(pages, config=SMALL_CHUNKS):
        result = refresh_chunks(
            pages,
            stored["chunks"],
            stored["dropped"],
            read_state(state_path),
            splitter_path,
            tokenizer_dir,
            config,
            load_tokenizer=load_tokenizer,
        )
        stored["chunks"], stored["dropped"] = result.chunks, result.dropped
        write_state(result.state, state_path)
        return result

    return refresh


def test_first_run_chunks_every_document_and_trains_the_splitter(run):
    result = run(pages_for("a", "1") + pages_for("b", "2"))
    assert result.rechunked == ["src/a", "src/b"] and result.reused == []
    assert result.splitter_trained and result.reason.startswith("first run")
    assert {c.doc_id for c in result.chunks} == {"src/a", "src/b"}


def test_unchanged_documents_are_reused_without_chunking(run):
    first = run(pages_for("a", "1") + pages_for("b", "2"))
    result = run(pages_for("a", "1") + pages_for("b", "2"))
    assert result.rechunked == [] and result.reused == ["src/a", "src/b"] and result.result is None
    assert result.chunks == first.chunks
    assert result.reason.startswith("nothing changed")


def test_only_the_changed_document_is_rechunked_and_a_removed_one_disappears(run):
    first = run(pages_for("a", "1") + pages_for("b", "2") + pages_for("c", "3"))
    result = run(pages_for("a", "1") + pages_for("b", "2-new", variant=1))
    assert result.rechunked == ["src/b"] and result.reused == ["src/a"] and result.removed == ["src/c"]
    assert not result.splitter_trained
    assert [c for c in result.chunks if c.doc_id == "src/a"] == [c for c in first.chunks if c.doc_id == "src/a"]
    assert "revision 1" in " ".join(c.text for c in result.chunks if c.doc_id == "src/b")
    assert not any(c.doc_id == "src/c" for c in result.chunks)


def test_a_settings_change_rechunks_everything(run):
    run(pages_for("a", "1") + pages_for("b", "2"))
    result = run(pages_for("a", "1") + pages_for("b", "2"), ChunkingConfig(target_tokens=32, min_tokens=8))
    assert result.rechunked == ["src/a", "src/b"] and "settings changed" in result.reason
    assert max(c.n_tokens for c in result.chunks) <= 64


def test_a_copy_of_a_reused_chunk_in_a_new_document_is_dropped_as_duplicate(run):
    run(pages_for("a", "1"))
    copy = [replace(p, doc_id="src/z", doc_sha256="9") for p in pages_for("a", "1")]
    result = run(pages_for("a", "1") + copy)
    assert result.rechunked == ["src/z"]
    assert not any(c.doc_id == "src/z" for c in result.chunks)
    assert {d.reason for d in result.dropped if d.doc_id == "src/z"} == {"duplicate"}


# ---- the tokenizer comes from the base model (issue #8) -------------------------------------------------------
def test_chunk_tokenizer_is_the_base_models_once_materialised(tmp_path, tokenizer_dir):
    import shutil

    from cpt_assets.lib.base_model import load_tokenizer
    from cpt_assets.lib.chunk_refresh import chunk_tokenizer_dir, tokenizer_hash
    from cpt_assets.lib.lake import Lake

    lake = Lake(tmp_path / "lake")
    folder, origin = chunk_tokenizer_dir(lake)
    assert folder == lake.tokenizer_cache_dir and "not materialised" in origin  # the cache lives in the lake
    assert (folder / "tokenizer.json").exists()
    shutil.copytree(tokenizer_dir, lake.base_model_dir)
    assert chunk_tokenizer_dir(lake) == (lake.base_model_dir, "the base_model asset")
    assert chunk_tokenizer_dir(lake, str(tokenizer_dir)) == (tokenizer_dir, "the configured folder")
    before = tokenizer_hash(lake.base_model_dir)
    tokenizer = load_tokenizer(tokenizer_dir)  # a private copy: the session fixture stays untouched
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|new_model|>"]})
    tokenizer.save_pretrained(str(lake.base_model_dir))  # another base model: other tokenizer files
    assert tokenizer_hash(lake.base_model_dir) != before  # so every document is re-chunked


def test_special_tokens_come_from_the_tokenizer(tokenizer):
    from cpt_assets.lib.chunk_refresh import tokenizer_special_tokens, with_tokenizer_special_tokens
    from cpt_assets.lib.chunking import ChunkingConfig
    from cpt_assets.lib.cleaning import DEFAULT_SPECIAL_TOKENS, CleaningConfig

    found = tokenizer_special_tokens(tokenizer)
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} <= set(found)
    assert set(found) <= set(DEFAULT_SPECIAL_TOKENS)  # SmolLM2's: the hard-coded list was this tokenizer's
    config = with_tokenizer_special_tokens(ChunkingConfig(), tokenizer)
    assert config.cleaning.special_tokens == found
    explicit = ChunkingConfig(cleaning=CleaningConfig(special_tokens=("<x>",)))
    assert with_tokenizer_special_tokens(explicit, tokenizer) == explicit  # explicit settings are kept
