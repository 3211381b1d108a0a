"""Pack documents into fixed-length token blocks for causal-LM continual pretraining.

The recipe is Hugging Face's `run_clm.py` (`tokenize_function` + `group_texts`, batched `datasets.map`), which the
seed notebooks follow too; the stream and the cut are `scoring.document_stream` and `scoring.pack`, shared with
evaluation: every document is tokenized without special tokens and followed by a document separator,
the token streams are concatenated and cut into blocks of exactly `block_size` tokens. No block is padded, so no
compute is spent on pad tokens; the tail of each map batch that does not fill a block is dropped, and we count those
tokens so a user sees what was left out. Labels are a copy of the inputs (the model shifts them), and nothing is
masked: the separator is a token the model must learn to predict. (transformers' `DataCollatorForLanguageModeling`
masks every pad-token id, and many tokenizers reuse their EOS as pad; that is why blocks carry their own labels.)

The separator is the project's `cleaning.DOCUMENT_SEPARATOR`, `<|endoftext|>` (id 0 in SmolLM2), when the tokenizer
has that token, else its EOS. SmolLM2-Instruct's EOS is `<|im_end|>`, the end of a chat turn: putting it between
pretraining documents would teach the model that a document ends a chat turn, and the cleaner removes every
`<|...|>` string from the text, so the separator never occurs inside a document.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cpt_assets.lib.scoring import document_separator_id, document_stream, document_texts, pack, tokenize_texts

log = logging.getLogger(__name__)

DEFAULT_MAP_BATCH = 1000  # documents per `datasets.map` batch, as in run_clm.py


@dataclass(frozen=True, slots=True)
class PackedBlocks:
    """Fixed-length blocks and the token accounting behind them."""

    dataset: Any  # datasets.Dataset with columns input_ids and labels, each row block_size long
    block_size: int
    separator_id: int  # the token after every document (see document_separator_id)
    documents: int  # non-empty documents that went in
    empty_documents: int  # documents with no text, skipped (they would add a lone separator)
    tokens_total: int  # document tokens plus one separator per document
    tokens_packed: int  # blocks * block_size
    tokens_dropped: int  # remainders that did not fill a block

    @property
    def blocks(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> str:
        """sha256 of the packed token ids: two packings with the same tokens have the same fingerprint."""
        digest = hashlib.sha256(str(self.block_size).encode())
        for batch in self.dataset.with_format("numpy").iter(batch_size=1024):
            digest.update(batch["input_ids"].astype("int32").tobytes())
        return digest.hexdigest()


def pack_blocks(
    texts_by_doc: Mapping[str, Sequence[str]] | Sequence[str],
    tokenizer: Any,
    block_size: int,
    map_batch_size: int = DEFAULT_MAP_BATCH,
) -> PackedBlocks:
    """Tokenize documents, put the document separator after each one, and cut the stream into `block_size` blocks.

    Args:
        texts_by_doc: document texts, or a mapping doc id -> that document's chunk texts in order.
        tokenizer: a Hugging Face tokenizer with `<|endoftext|>` or an EOS token.
        block_size: tokens per block (> 0).
        map_batch_size: documents per `datasets.map` batch; the remainder is dropped per batch, as in run_clm.py.

    Returns:
        The blocks as a `datasets.Dataset` (`input_ids`, `labels`) with the token counts.

    Raises:
        ValueError: if block_size is not positive or the tokenizer has no separator token.
    """
    from datasets import Dataset

    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    separator = document_separator_id(tokenizer)
    all_texts = document_texts(texts_by_doc)
    texts = [text for text in all_texts if text.strip()]

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"input_ids": [ids + [separator] for ids in tokenize_texts(batch["text"], tokenizer)]}

    def group_texts(batch: dict[str, list[list[int]]]) -> dict[str, list]:
        # Each document already ends with its separator (added in tokenize), so the stream adds none.
        blocks = pack(document_stream(batch["input_ids"], None), block_size)
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    documents = Dataset.from_dict({"text": texts})
    tokenized = documents.map(tokenize, batched=True, batch_size=map_batch_size, remove_columns=["text"])
    tokens_total = sum(len(ids) for ids in tokenized["input_ids"]) if len(tokenized) else 0
    packed = tokenized.map(group_texts, batched=True, batch_size=map_batch_size)
    if len(packed) == 0:
        packed = Dataset.from_dict({"input_ids": [], "labels": []})
    tokens_packed = len(packed) * block_size
    result = PackedBlocks(
        dataset=packed,
        block_size=block_size,
        separator_id=separator,
        documents=len(texts),
        empty_documents=len(all_texts) - len(texts),
        tokens_total=tokens_total,
        tokens_packed=tokens_packed,
        tokens_dropped=tokens_total - tokens_packed,
    )
    log.info(
        "Packed %d documents (%d tokens) into %d blocks of %d; %d tokens dropped",
        result.documents,
        tokens_total,
        result.blocks,
        block_size,
        result.tokens_dropped,
    )
    return result
