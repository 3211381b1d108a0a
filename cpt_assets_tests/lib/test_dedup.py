"""Exact duplicate removal and near-duplicate reporting on small literal chunks."""

from __future__ import annotations

import hashlib

import pytest

from cpt_assets.lib.dedup import (
    DedupConfig,
    NearDuplicateIndex,
    cross_source_duplicates,
    drop_exact_duplicates,
    mark_near_duplicates,
    normalize_for_hash,
    shingles,
    text_fingerprint,
)
from cpt_assets.lib.types import Chunk

BASE = (
    "A container-specific host OS is a minimalist OS explicitly designed to only run containers, with all other "
    "services and functionality disabled, and with read-only file systems and other hardening practices employed. "
    "When using a container-specific host OS, attack surfaces are typically much smaller than they would be with a "
    "general-purpose host OS, so there are fewer opportunities to attack and compromise a container-specific host OS."
)
OTHER = (
    "The handshake protocol allows peers to negotiate a protocol version, select cryptographic algorithms, "
    "optionally authenticate each other, and establish shared secret keying material. Once the handshake is "
    "complete, the peers use the established keys to protect the application-layer traffic."
)


def chunk(text: str, doc_id: str = "src/doc", index: int = 0, source: str = "src") -> Chunk:
    return Chunk(
        chunk_id=hashlib.sha256(text.encode()).hexdigest(),
        doc_id=doc_id,
        source=source,
        doc_sha256="x",
        chunk_index=index,
        text=text,
        n_tokens=len(text.split()),
        n_chars=len(text),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello,   World!", "hello world"),
        ("  MUST\nNOT  ", "must not"),
        ("end-to-end (E2E)", "end to end e2e"),
        ("under_score", "under score"),
        ("café ≤ 5", "café 5"),
        ("", ""),
    ],
)
def test_normalize_for_hash(text: str, expected: str) -> None:
    assert normalize_for_hash(text) == expected


def test_fingerprint_equal_for_case_and_spacing_variants() -> None:
    assert text_fingerprint("The Server MUST abort.") == text_fingerprint("the server  must abort")
    assert text_fingerprint("The server MUST abort.") != text_fingerprint("The server MAY abort.")


def test_drop_exact_duplicates_keeps_first_and_records_reason() -> None:
    chunks = [chunk(BASE, "s/a"), chunk(OTHER, "s/a", 1), chunk(BASE.upper(), "s/b"), chunk(BASE + " ", "s/c")]
    kept, dropped = drop_exact_duplicates(chunks)
    assert [(c.doc_id, c.chunk_index) for c in kept] == [("s/a", 0), ("s/a", 1)]
    assert [(d.doc_id, d.reason) for d in dropped] == [("s/b", "duplicate"), ("s/c", "duplicate")]
    assert dropped[0].text == BASE.upper()


def test_seen_dict_deduplicates_across_calls() -> None:
    seen: dict[str, str] = {}
    drop_exact_duplicates([chunk(BASE, "nist/a", source="nist")], seen)
    kept, dropped = drop_exact_duplicates([chunk(BASE, "ietf/b", source="ietf"), chunk(OTHER, "ietf/b", 1)], seen)
    assert [c.text for c in kept] == [OTHER]
    assert [(d.source, d.reason) for d in dropped] == [("ietf", "duplicate")]


def test_cross_source_duplicates_name_the_later_source() -> None:
    dropped = cross_source_duplicates(
        {"nist": [chunk(BASE, "nist/a", source="nist")], "ietf": [chunk(BASE, "ietf/b", source="ietf")]}
    )
    assert [(d.source, d.doc_id, d.reason) for d in dropped] == [("nist", "nist/a", "duplicate")]  # ietf < nist


@pytest.mark.parametrize(
    ("text", "size", "expected"),
    [
        ("a b c d", 2, [b"a b", b"b c", b"c d"]),
        ("A, b! c", 5, [b"a b c"]),
        ("", 3, []),
        ("caf\u00e9 au lait", 2, ["caf\u00e9 au".encode(), b"au lait"]),
    ],
)
def test_shingles(text: str, size: int, expected: list[bytes]) -> None:
    assert shingles(text, size) == expected


def test_near_duplicates_marked_with_earlier_chunk() -> None:
    revised = BASE.replace("much smaller", "far smaller")
    chunks = [chunk(BASE, "s/a"), chunk(OTHER, "s/b"), chunk(revised, "s/c")]
    marked, count = mark_near_duplicates(chunks)
    assert count == 1
    assert [c.near_duplicate_of for c in marked] == [None, None, chunks[0].chunk_id]
    assert [c.text for c in marked] == [c.text for c in chunks]  # reported, nothing dropped or changed


def test_near_duplicate_threshold_is_configurable() -> None:
    half = BASE[: len(BASE) // 2] + " " + OTHER[: len(OTHER) // 2]
    chunks = [chunk(BASE), chunk(half, "s/h")]
    assert mark_near_duplicates(chunks, DedupConfig(near_duplicate_threshold=0.8))[1] == 0
    assert mark_near_duplicates(chunks, DedupConfig(near_duplicate_threshold=0.2))[1] == 1


def test_near_duplicate_points_to_earliest_match() -> None:
    v1 = BASE.replace("much smaller", "far smaller")
    v2 = BASE.replace("much smaller", "a lot smaller")
    chunks = [chunk(BASE, "s/a"), chunk(v1, "s/b"), chunk(v2, "s/c")]
    marked, count = mark_near_duplicates(chunks)
    assert count == 2
    assert marked[1].near_duplicate_of == marked[2].near_duplicate_of == chunks[0].chunk_id


def test_index_carried_across_sources() -> None:
    index = NearDuplicateIndex(DedupConfig())
    mark_near_duplicates([chunk(BASE, "nist/a", source="nist")], index=index)
    marked, count = mark_near_duplicates([chunk(BASE.replace("much", "far"), "ietf/b", source="ietf")], index=index)
    assert count == 1
    assert marked[0].near_duplicate_of == chunk(BASE).chunk_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"near_duplicate_threshold": 0.0}, r"near_duplicate_threshold must be in \(0, 1\], got 0.0"),
        ({"near_duplicate_threshold": 1.5}, r"near_duplicate_threshold must be in \(0, 1\], got 1.5"),
        ({"num_perm": 8}, "num_perm must be >= 16, got 8"),
        ({"shingle_words": 0}, "shingle_words must be >= 1, got 0"),
    ],
)
def test_dedup_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DedupConfig(**kwargs)
