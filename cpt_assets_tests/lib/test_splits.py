import hashlib

import pytest

from cpt_assets.lib.splits import SplitConfig, assign_documents, leaked_documents, make_splits, ratio_deviation
from cpt_assets.lib.types import Chunk


def chunk(doc: str, index: int, tokens: int, source: str = "s", text: str | None = None) -> Chunk:
    text = text if text is not None else f"{doc} chunk {index}"
    return Chunk(
        chunk_id=hashlib.sha256(text.encode()).hexdigest(),
        doc_id=f"{source}/{doc}",
        source=source,
        doc_sha256="x",
        chunk_index=index,
        text=text,
        n_tokens=tokens,
        n_chars=len(text),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": 0.7, "validation": 0.2, "test": 0.2}, "sum to 1"),
        ({"train": -0.1, "validation": 0.6, "test": 0.5}, "train=-0.1"),
        ({"train": 0.0, "validation": 0.5, "test": 0.5}, "needs training data"),
        ({"train": 1.5, "validation": -0.5, "test": 0.0}, r"within \[0, 1\]"),
    ],
)
def test_split_config_rejects_bad_ratios(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


def test_documents_never_cross_splits_and_ratios_hold():
    chunks = [chunk(f"d{d}", i, 100 + 7 * d) for d in range(30) for i in range(5 + d % 4)]
    result = make_splits(chunks, previous={}, config=SplitConfig())
    assert leaked_documents(result.rows) == {}
    assert sum(len(rows) for rows in result.rows.values()) == len(chunks)
    assert max(ratio_deviation(result.token_share, SplitConfig()).values()) <= 0.02
    assert result.new_documents == 30 and result.kept_documents == 0


def test_every_source_gets_every_split_when_it_has_three_documents():
    chunks = [chunk(f"d{d}", 0, 100, source=src) for src in ("a", "b") for d in range(3)]
    result = make_splits(chunks, previous={}, config=SplitConfig())
    for split, rows in result.rows.items():
        assert {c.source for c in rows} == {"a", "b"}, split


def test_previous_assignments_are_kept_when_documents_are_added():
    first = [chunk(f"d{d}", 0, 100) for d in range(10)]
    before = make_splits(first, previous={}, config=SplitConfig())
    previous = {a.doc_id: a.split for a in before.assignments}
    grown = first + [chunk(f"new{d}", 0, 100) for d in range(5)]
    after = make_splits(grown, previous=previous, config=SplitConfig())
    now = {a.doc_id: a.split for a in after.assignments}
    assert all(now[doc] == split for doc, split in previous.items())
    assert after.kept_documents == 10 and after.new_documents == 5


def test_assignment_is_deterministic():
    docs = {f"s/d{d}": ("s", 50 + d) for d in range(12)}
    assert assign_documents(docs, {}, SplitConfig()) == assign_documents(
        dict(reversed(docs.items())), {}, SplitConfig()
    )


def test_exact_text_shared_with_train_is_dropped_from_evaluation_splits():
    shared = "This publication is available free of charge."
    chunks = [chunk(f"d{d}", 0, 100) for d in range(10)] + [chunk(f"d{d}", 1, 5, text=shared) for d in range(10)]
    result = make_splits(chunks, previous={}, config=SplitConfig())
    assert sum(c.text == shared for c in result.rows["train"]) >= 1
    assert all(c.text != shared for split in ("validation", "test") for c in result.rows[split])
    assert result.cross_split_duplicates >= 1


def test_split_hash_changes_with_content():
    chunks = [chunk(f"d{d}", 0, 100) for d in range(10)]
    a = make_splits(chunks, {}, SplitConfig())
    b = make_splits(chunks + [chunk("d0", 1, 100)], {}, SplitConfig())
    assert a.split_hash("train") == make_splits(chunks, {}, SplitConfig()).split_hash("train")
    assert {a.split_hash(s) for s in ("train", "validation", "test")} != {
        b.split_hash(s) for s in ("train", "validation", "test")
    }


@pytest.mark.parametrize(
    ("share", "documents", "passed"),
    [
        ({"train": 0.70, "validation": 0.20, "test": 0.10}, 30, True),
        ({"train": 0.715, "validation": 0.19, "test": 0.095}, 30, True),
        ({"train": 0.75, "validation": 0.15, "test": 0.10}, 30, False),
        ({"train": 0.75, "validation": 0.15, "test": 0.10}, 4, True),
    ],
)
def test_ratio_check(share, documents, passed):
    from cpt_assets.lib.splits import ratio_check

    assert ratio_check(share, SplitConfig(), documents)[0] is passed


def test_leakage_check_names_the_document():
    from cpt_assets.lib.splits import leakage_check

    rows = {"train": [chunk("a", 0, 5)], "validation": [chunk("a", 1, 5)], "test": []}
    passed, _, details = leakage_check(rows)
    assert not passed and details == {"s/a": ["train", "validation"]}


# Token counts of the 23 default documents (ietf, nist) as chunked on 2026-11-23: a few large documents dominate,
# which is where a per-source greedy pass alone missed 70/20/10 by 2.9 points.
DEFAULT_CORPUS_TOKENS = {
    "ietf": [70384, 44098, 29425, 27848, 19717, 15589, 13667, 7498, 5439, 931, 824, 805],
    "nist": [59341, 29169, 21719, 16090, 14650, 11165, 10951, 9579, 7791, 5141, 1845],
}


def test_default_corpus_sizes_split_within_tolerance_with_every_source_in_every_split():
    from cpt_assets.lib.splits import assign_documents

    doc_tokens = {
        f"{source}/{i}": (source, tokens)
        for source, sizes in DEFAULT_CORPUS_TOKENS.items()
        for i, tokens in enumerate(sizes)
    }
    assigned = assign_documents(doc_tokens, {}, SplitConfig())
    grand = sum(tokens for _, tokens in doc_tokens.values())
    for split in ("train", "validation", "test"):
        share = sum(doc_tokens[d][1] for d, s in assigned.items() if s == split) / grand
        assert abs(share - getattr(SplitConfig(), split)) <= 0.02
        assert {doc_tokens[d][0] for d, s in assigned.items() if s == split} == {"ietf", "nist"}


def test_rebalancing_never_moves_an_earlier_assignment():
    from cpt_assets.lib.splits import assign_documents

    doc_tokens = {"a/1": ("a", 1000), "a/2": ("a", 10), "a/3": ("a", 10), "a/4": ("a", 5000)}
    previous = {"a/1": "test", "a/4": "test"}
    assigned = assign_documents(doc_tokens, previous, SplitConfig())
    assert assigned["a/1"] == "test" and assigned["a/4"] == "test"
