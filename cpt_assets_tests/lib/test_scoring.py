"""The scoring core: literal tables for the stream, the packer, the per-token loss and the greedy stop rule, and one
real tiny Llama to show HF logits and numpy logits give the same loss and that decoding is transformers' greedy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cpt_assets.lib.scoring import (
    block_nll,
    document_stream,
    greedy_decode,
    pack,
    perplexity,
    stop_at_eos,
    token_nll,
)


@pytest.mark.parametrize(
    ("docs", "separator", "expected"),
    [
        ([[1, 2], [3]], 0, [1, 2, 0, 3, 0]),
        ([[1], [], [2]], 0, [1, 0, 2, 0]),  # an empty document adds no lone separator
        ([[1, 2], [3]], None, [1, 2, 3]),
        ([], 0, []),
    ],
)
def test_document_stream(docs, separator, expected):
    assert document_stream(docs, separator) == expected


@pytest.mark.parametrize(
    ("stream", "block_size", "kwargs", "expected"),
    [
        ([1, 2, 3, 4, 5], 2, {}, [[1, 2], [3, 4]]),  # training: the tail is dropped, never padded
        ([1, 2, 3, 4, 5], 2, {"keep_tail": True}, [[1, 2], [3, 4]]),  # a 1-token tail predicts nothing
        ([1, 2, 3, 4, 5], 3, {"keep_tail": True}, [[1, 2, 3], [4, 5]]),
        ([1, 2, 3, 4, 5, 6, 7], 2, {"max_blocks": 2}, [[1, 2], [3, 4]]),
        ([1, 2, 3], 8, {}, []),
        ([1, 2, 3], 8, {"keep_tail": True}, [[1, 2, 3]]),
        ([1, 2, 3], 8, {"keep_tail": True, "min_tail": 4}, []),
        ([], 4, {"keep_tail": True}, []),
    ],
)
def test_pack(stream, block_size, kwargs, expected):
    assert pack(stream, block_size, **kwargs) == expected


# Evaluation's packing (moved from test_evaluation.test_pack_eval_blocks): separator 0 after each document, tail kept.
@pytest.mark.parametrize(
    ("docs", "block_size", "expected"),
    [
        ([[1, 2, 3], [4, 5]], 3, [[1, 2, 3], [0, 4, 5]]),  # a 1-token tail predicts nothing: dropped
        ([[1, 2, 3], [4, 5]], 4, [[1, 2, 3, 0], [4, 5, 0]]),
        ([[1], [], [2]], 8, [[1, 0, 2, 0]]),
        ([], 4, []),
    ],
)
def test_eval_packing(docs, block_size, expected):
    assert pack(document_stream(docs, 0), block_size, keep_tail=True) == expected


# GGUF verification's former make_blocks (moved from test_gguf_export): plain concatenation, a cap, a 16-token tail.
@pytest.mark.parametrize(
    ("lengths", "block_size", "max_blocks", "expected"),
    [
        ([40], 16, 8, [16, 16]),  # trailing 8 tokens dropped
        ([10, 10], 16, 8, [16]),  # texts are concatenated
        ([100], 32, 2, [32, 32]),  # capped at max_blocks
        ([5], 16, 8, []),  # too short
        ([20], 16, 8, [16]),
        ([50], 64, 8, [50]),  # one short block is kept when it has enough tokens
    ],
)
def test_capped_blocks(lengths, block_size, max_blocks, expected):
    stream = document_stream([list(range(n)) for n in lengths], None)
    blocks = pack(stream, block_size, keep_tail=True, min_tail=16, max_blocks=max_blocks)
    assert [len(b) for b in blocks] == expected


def test_pack_rejects_bad_sizes():
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        pack([1, 2], 0)
    with pytest.raises(ValueError, match="max_blocks >= 0"):
        pack([1, 2], 2, max_blocks=-1)


@pytest.mark.parametrize(
    ("logits", "tokens", "expected"),
    [
        ([[0.0, 0.0], [0.0, 0.0]], [0, 1], [math.log(2)]),  # uniform over 2: log 2
        ([[0.0, math.log(3)], [9.0, 9.0]], [0, 1, 0], [math.log(4 / 3), math.log(2)]),
        ([[1000.0, 0.0]], [1, 0], [0.0]),  # large logits stay finite (log-sum-exp); the last row is unused
        ([[0.0, 0.0]], [1], []),  # one token predicts nothing
    ],
)
def test_token_nll_numpy_and_torch_agree(logits, tokens, expected):
    rows = np.asarray(logits + [[0.0, 0.0]], dtype=np.float32)  # one spare row: rows past len-1 are ignored
    assert token_nll(rows, tokens) == pytest.approx(expected, abs=1e-6)
    assert token_nll(torch.tensor(rows), tokens) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("nll", "expected"),
    [([0.0] * 5, 1.0), ([math.log(20)] * 4, 20.0), ([], math.nan), ([1e6], math.inf), ([0.0, 2 * math.log(3)], 3.0)],
)
def test_perplexity_table(nll, expected):
    result = perplexity(nll)
    assert (math.isnan(result) and math.isnan(expected)) or result == pytest.approx(expected)


@pytest.mark.parametrize(
    ("tokens", "limit", "eos", "expected"),
    [
        ([5, 6, 7], 8, [2], [5, 6, 7]),
        ([5, 2, 7], 8, [2], [5]),
        ([5, 6, 7], 2, [2], [5, 6]),
        ([9, 6], 8, [2, None, 9], []),  # any of several EOS ids stops; None is ignored
    ],
)
def test_stop_at_eos(tokens, limit, eos, expected):
    assert stop_at_eos(tokens, limit, eos) == expected


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def test_block_nll_equals_transformers_loss_and_numpy_path(tiny):
    blocks = [[5, 17, 300, 42, 9, 8], [100, 7, 3]]
    rows = block_nll(tiny, blocks, batch_size=2, pad_id=0)  # right-padded batch: padding must not leak in
    assert [len(r) for r in rows] == [5, 2]
    with torch.no_grad():
        for block, row in zip(blocks, rows, strict=True):
            ids = torch.tensor([block])
            output = tiny(input_ids=ids, labels=ids)
            assert float(row.mean()) == pytest.approx(float(output.loss), rel=1e-5)
            assert token_nll(output.logits[0].numpy(), block) == pytest.approx(row, abs=1e-5)


def test_greedy_decode_is_transformers_greedy(tiny):
    prompts = [[5, 17, 300], [100, 7, 3, 9, 11]]
    ours = greedy_decode(tiny, prompts, [6, 4], [None], batch_size=2, pad_id=0)  # left-padded batch
    with torch.no_grad():
        for prompt, limit, tokens in zip(prompts, [6, 4], ours, strict=True):
            out = tiny.generate(torch.tensor([prompt]), max_new_tokens=limit, do_sample=False, pad_token_id=0)
            assert tokens == out[0, len(prompt) :].tolist()
    with pytest.raises(ValueError, match="2 prompts and 1 limits"):
        greedy_decode(tiny, prompts, [3], [0])
