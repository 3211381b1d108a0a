"""Block packing with the real SmolLM2 tokenizer: <|endoftext|> between documents, exact blocks, counted remainders."""

from __future__ import annotations

import pytest

from cpt_assets.lib.cleaning import DOCUMENT_SEPARATOR
from cpt_assets.lib.packing import pack_blocks
from cpt_assets.lib.scoring import DOCUMENT_CHUNK_SEPARATOR, document_separator_id, document_texts

ENDOFTEXT_ID = 0  # SmolLM2's <|endoftext|>, the project's document separator


def stream(tokenizer, texts: list[str]) -> list[int]:
    """What packing must produce before cutting: each document's tokens, then <|endoftext|>."""
    out: list[int] = []
    for text in texts:
        out += tokenizer(text, add_special_tokens=False)["input_ids"] + [ENDOFTEXT_ID]
    return out


def word_tokenizer(tokens: list[str], eos: str | None):
    """A real (small) fast tokenizer with a word-level vocabulary, optionally with an EOS token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[UNK]", *tokens])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"eos_token": eos} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **kwargs)


def test_separator_is_endoftext_not_the_chat_eos(tokenizer):
    # SmolLM2-Instruct ends chat turns with <|im_end|>; documents are separated by <|endoftext|>.
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id != ENDOFTEXT_ID
    assert DOCUMENT_SEPARATOR == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR) == ENDOFTEXT_ID
    assert document_separator_id(tokenizer) == ENDOFTEXT_ID
    packed = pack_blocks(["first doc", "second doc"], tokenizer, 1)
    flat = [row[0] for row in packed.dataset["input_ids"]]
    assert packed.separator_id == ENDOFTEXT_ID
    assert flat.count(ENDOFTEXT_ID) == 2 and tokenizer.eos_token_id not in flat


@pytest.mark.parametrize(
    ("vocab", "eos", "expected"),
    [
        (["a", "b", "<|endoftext|>", "</s>"], "</s>", 3),  # has both: <|endoftext|> wins
        (["a", "b", "</s>"], "</s>", 3),  # no <|endoftext|>: the EOS
    ],
)
def test_separator_falls_back_to_eos(vocab, eos, expected):
    tok = word_tokenizer(vocab, eos)
    assert document_separator_id(tok) == expected
    packed = pack_blocks(["a b", "b a a"], tok, 1)
    assert [row[0] for row in packed.dataset["input_ids"]] == [1, 2, expected, 2, 1, 1, expected]


def test_tokenizer_without_any_separator_fails():
    with pytest.raises(ValueError, match="has neither <\\|endoftext\\|> nor an EOS token"):
        pack_blocks(["a b"], word_tokenizer(["a", "b"], None), 2)


@pytest.mark.parametrize(
    ("texts", "block_size"),
    [
        (["Risk is a function of likelihood and impact."], 4),
        (["Security categories.", "FIPS 199 defines three levels: low, moderate, high."], 5),
        (["a b c d e f g h", "i j k", "l m n o p"], 3),
        (["The TLS handshake negotiates a cipher suite."] * 7, 16),
        (["x"], 2),  # one token plus the separator: exactly one block, nothing dropped
    ],
)
def test_blocks_are_the_separated_stream_cut_into_equal_blocks(tokenizer, texts, block_size):
    expected = stream(tokenizer, texts)
    packed = pack_blocks(texts, tokenizer, block_size)
    usable = len(expected) // block_size * block_size

    rows = packed.dataset["input_ids"]
    assert [len(row) for row in rows] == [block_size] * (usable // block_size)  # no padding, no short block
    assert [t for row in rows for t in row] == expected[:usable]
    assert packed.dataset["labels"] == rows  # labels are the inputs; the model shifts them
    assert packed.tokens_total == len(expected)
    assert packed.tokens_packed == usable
    assert packed.tokens_dropped == len(expected) - usable
    assert packed.documents == len(texts)


def test_separator_sits_after_every_document(tokenizer):
    texts = ["first document text", "second one", "third"]
    packed = pack_blocks(texts, tokenizer, 1)  # block 1: nothing dropped, the stream is visible token by token
    flat = [row[0] for row in packed.dataset["input_ids"]]
    positions = [i for i, t in enumerate(flat) if t == ENDOFTEXT_ID]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert positions == [lengths[0], lengths[0] + lengths[1] + 1, sum(lengths) + 2]
    assert packed.tokens_dropped == 0


def test_mapping_joins_chunks_of_a_document_and_separates_documents(tokenizer):
    by_doc = {"doc-a": ["Chunk one.", "Chunk two."], "doc-b": ["Only chunk."]}
    assert document_texts(by_doc) == [f"Chunk one.{DOCUMENT_CHUNK_SEPARATOR}Chunk two.", "Only chunk."]
    packed = pack_blocks(by_doc, tokenizer, 1)
    flat = [row[0] for row in packed.dataset["input_ids"]]
    assert flat.count(ENDOFTEXT_ID) == 2
    assert flat == stream(tokenizer, document_texts(by_doc))


def test_empty_documents_are_skipped_and_counted(tokenizer):
    packed = pack_blocks(["", "   ", "real text here"], tokenizer, 1)
    assert (packed.documents, packed.empty_documents) == (1, 2)
    assert [row[0] for row in packed.dataset["input_ids"]] == stream(tokenizer, ["real text here"])


def test_remainder_is_dropped_per_map_batch_and_counted(tokenizer):
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    whole = pack_blocks(texts, tokenizer, 4)
    per_doc = pack_blocks(texts, tokenizer, 4, map_batch_size=1)
    per_doc_expected = sum(len(stream(tokenizer, [t])) % 4 for t in texts)
    assert per_doc.tokens_dropped == per_doc_expected
    assert whole.tokens_dropped == len(stream(tokenizer, texts)) % 4
    assert whole.tokens_dropped <= per_doc.tokens_dropped


def test_too_little_text_gives_no_block(tokenizer):
    packed = pack_blocks(["tiny"], tokenizer, 512)
    assert packed.blocks == 0
    assert packed.tokens_dropped == packed.tokens_total > 0


@pytest.mark.parametrize("block_size", [0, -4])
def test_block_size_must_be_positive(tokenizer, block_size):
    with pytest.raises(ValueError, match=f"block_size must be > 0, got {block_size}"):
        pack_blocks(["text"], tokenizer, block_size)


def test_fingerprint_follows_the_tokens(tokenizer):
    one = pack_blocks(["same words", "again"], tokenizer, 2)
    same = pack_blocks(["same words", "again"], tokenizer, 2)
    other = pack_blocks(["other words", "again"], tokenizer, 2)
    assert one.fingerprint() == same.fingerprint() != other.fingerprint()
