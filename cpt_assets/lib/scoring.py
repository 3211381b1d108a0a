"""The one scoring core: how documents become token blocks, how a block is scored, how a prompt is continued.

Training, evaluation and GGUF verification all call these functions, so a figure such as "test perplexity" has one
meaning: the same document stream (each document's tokens, then the document separator), the same cut into blocks,
the same per-token negative log-likelihood, whether the logits come from a Hugging Face model (torch) or from
llama.cpp (numpy), and the same greedy decoding rule (argmax, stop at EOS, at most `limit` tokens).

- `document_stream` + `pack`: the recipe of HF's run_clm.py `group_texts`; training drops the tail that does not
  fill a block (no padding), evaluation keeps it so a short source is still scored (scores are token-weighted, so
  a short block counts for what it holds).
- `token_nll`: log-sum-exp minus the target logit, summed in float64 for numpy and through `F.cross_entropy` for
  torch.
- `perplexity`: exp of the mean per-token NLL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cpt_assets.lib.cleaning import DOCUMENT_SEPARATOR

DOCUMENT_CHUNK_SEPARATOR = "\n\n"  # how the chunks of one document are joined before tokenizing


# ---- documents -> token stream -> blocks -----------------------------------------------------------------------
def document_separator_id(tokenizer: Any) -> int:
    """The id of `<|endoftext|>` (cleaning.DOCUMENT_SEPARATOR) when the tokenizer has it, else the EOS id.

    Raises:
        ValueError: the tokenizer has neither.
    """
    token_id = tokenizer.get_vocab().get(DOCUMENT_SEPARATOR)
    if token_id is not None:
        return int(token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer {type(tokenizer).__name__} has neither {DOCUMENT_SEPARATOR} nor an EOS token "
            "to separate documents"
        )
    return int(tokenizer.eos_token_id)


def document_texts(texts_by_doc: Mapping[str, Sequence[str]] | Sequence[str]) -> list[str]:
    """One string per document: a mapping doc id -> ordered chunk texts is joined per document; a list passes."""
    if isinstance(texts_by_doc, Mapping):
        return [DOCUMENT_CHUNK_SEPARATOR.join(chunks) for chunks in texts_by_doc.values()]
    if isinstance(texts_by_doc, str):
        raise TypeError("texts_by_doc must be a list of document texts or a mapping doc id -> chunk texts, not a str")
    return list(texts_by_doc)


def tokenize_texts(texts: Iterable[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each text, no special tokens added (the separator is added by `document_stream`)."""
    texts = list(texts)
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def document_stream(token_lists: Iterable[Sequence[int]], separator_id: int | None) -> list[int]:
    """Concatenate documents' tokens, `separator_id` after each non-empty one (None: plain concatenation)."""
    stream: list[int] = []
    for tokens in token_lists:
        if len(tokens):
            stream.extend(int(token) for token in tokens)
            if separator_id is not None:
                stream.append(int(separator_id))
    return stream


def pack(
    stream: Sequence[int], block_size: int, *, keep_tail: bool = False, min_tail: int = 2, max_blocks: int = 0
) -> list[list[int]]:
    """Cut a token stream into blocks of `block_size`.

    Args:
        stream: token ids (see `document_stream`).
        block_size: tokens per block (>= 1).
        keep_tail: keep the last, shorter block when it has at least `min_tail` tokens (evaluation); False drops
            it (training: no padding).
        min_tail: the shortest tail kept (at least 2 scores one token), capped at block_size.
        max_blocks: keep the first `max_blocks` blocks (0: all).

    Raises:
        ValueError: block_size < 1 or max_blocks < 0.
    """
    if block_size < 1 or max_blocks < 0:
        raise ValueError(f"block_size must be >= 1 and max_blocks >= 0, got {block_size} and {max_blocks}")
    usable = len(stream) if keep_tail else (len(stream) // block_size) * block_size
    blocks = [list(stream[start : start + block_size]) for start in range(0, usable, block_size)]
    if max_blocks:
        blocks = blocks[:max_blocks]
    if blocks and len(blocks[-1]) < block_size and len(blocks[-1]) < min(min_tail, block_size):
        blocks.pop()
    return blocks


def text_blocks(texts: Iterable[str], tokenizer: Any, block_size: int, max_blocks: int = 0) -> list[list[int]]:
    """Evaluation blocks of plain texts: each text a document (separator after it), tail kept.

    The first `max_blocks` (0: all). The general-text control set is scored this way by the report and the gate.
    """
    stream = document_stream(tokenize_texts(texts, tokenizer), document_separator_id(tokenizer))
    return pack(stream, block_size, keep_tail=True, max_blocks=max_blocks)


# ---- per-token loss ----------------------------------------------------------------------------------------------
def token_nll(logits: Any, tokens: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood (nats, float64) of tokens[1:] under logits[:len(tokens) - 1].

    `logits` has one row of vocabulary scores per position: a torch tensor (a HF model's `.logits[i]`) or a numpy
    array (llama.cpp's `Llama.scores`); rows past len(tokens) - 1 are ignored.
    """
    count = len(tokens) - 1
    if count < 1:
        return np.zeros(0, dtype=np.float64)
    if hasattr(logits, "detach"):  # torch: the fused, numerically stable cross-entropy
        import torch
        import torch.nn.functional as F

        rows = logits[:count].float()
        targets = torch.as_tensor(list(tokens[1:]), dtype=torch.long, device=rows.device)
        return F.cross_entropy(rows, targets, reduction="none").double().cpu().numpy()
    rows = np.asarray(logits[:count])
    if rows.dtype not in (np.float32, np.float64):
        rows = rows.astype(np.float32)
    # Exponentials in the logits' own precision (llama.cpp's float32: 3x faster than a float64 copy of a 49k-wide
    # row), summed and logged in float64; each term is in [0, 1], so the NLL is exact to ~1e-7.
    peak = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - peak).sum(axis=1, dtype=np.float64)) + peak[:, 0].astype(np.float64)
    return log_z - rows[np.arange(count), np.asarray(tokens[1:])].astype(np.float64)


def block_nll(model: Any, blocks: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> list[np.ndarray]:
    """Per-token NLL of every block under a HF causal LM, `batch_size` blocks per (right-padded) forward pass."""
    import torch

    device = next(model.parameters()).device
    results: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size]
            width = max(len(block) for block in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, block in enumerate(batch):
                ids[row, : len(block)] = torch.tensor(list(block))
                mask[row, : len(block)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            results.extend(token_nll(logits[row], block) for row, block in enumerate(batch))
    return results


def perplexity(nll: Sequence[float] | np.ndarray) -> float:
    """The exp of the mean per-token NLL; NaN when no token was scored, inf past float range."""
    values = np.asarray(nll, dtype=np.float64)
    if values.size == 0:
        return math.nan
    mean = float(values.mean())
    return math.exp(mean) if mean < 700 else math.inf  # exp overflows a float past ~709


# ---- greedy decoding ---------------------------------------------------------------------------------------------
def stop_at_eos(tokens: Sequence[int], limit: int, eos_ids: Iterable[int | None]) -> list[int]:
    """The first `limit` tokens, cut before the first end-of-sequence id."""
    stops = {int(e) for e in eos_ids if e is not None}
    result: list[int] = []
    for token in list(tokens)[:limit]:
        if int(token) in stops:
            break
        result.append(int(token))
    return result


def greedy_decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    limits: Sequence[int] | int,
    eos_ids: Iterable[int | None],
    *,
    batch_size: int = 1,
    pad_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt: argmax at every step, at most `limits[i]` tokens, cut at any EOS id.

    `model` is a HF causal LM (decoded by `generate`, left-padded batches of `batch_size`, a fresh greedy config so
    nothing is inherited from the checkpoint) or a llama-cpp-python `Llama` (token by token through its KV cache).
    """
    eos = [int(e) for e in eos_ids if e is not None]
    lengths = [int(limits)] * len(prompts) if isinstance(limits, int) else [int(n) for n in limits]
    if len(lengths) != len(prompts):
        raise ValueError(f"greedy_decode got {len(prompts)} prompts and {len(lengths)} limits")
    if hasattr(model, "scores") and hasattr(model, "eval") and hasattr(model, "n_tokens"):  # llama_cpp.Llama
        return [
            _greedy_llama_cpp(model, list(prompt), limit, eos) for prompt, limit in zip(prompts, lengths, strict=True)
        ]
    return _greedy_hf(model, prompts, lengths, eos, batch_size, eos[0] if pad_id is None else pad_id)


def _greedy_llama_cpp(llm: Any, prompt: list[int], limit: int, eos: list[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    generated: list[int] = []
    for _ in range(limit):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in eos:
            break
        generated.append(token)
        llm.eval([token])
    return generated


def _greedy_hf(
    model: Any, prompts: Sequence[Sequence[int]], limits: list[int], eos: list[int], batch_size: int, pad_id: int
) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    outputs: list[list[int]] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch, batch_limits = prompts[start : start + batch_size], limits[start : start + batch_size]
            width = max(len(prompt) for prompt in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
                mask[row, width - len(prompt) :] = 1
            config = GenerationConfig(
                max_new_tokens=max(batch_limits),
                min_new_tokens=0,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos,
            )
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            outputs.extend(
                stop_at_eos(generated[row, width:].tolist(), limit, eos) for row, limit in enumerate(batch_limits)
            )
    return outputs
