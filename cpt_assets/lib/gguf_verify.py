"""Is a GGUF file the model we trained? Load it in llama.cpp and compare it with the merged HF model.

A GGUF can load and still babble: an unrecognised BPE pre-tokenizer, a wrong EOS or a missed q/k permutation give
finite logits and no error (llama.cpp #9927, #4023). So every GGUF is loaded with `llama-cpp-python` and compared
with the Hugging Face model it came from, on the same token blocks:
- tokenization: llama.cpp's tokens for each test text must equal the HF tokenizer's;
- perplexity: both score identical token blocks (HF's tokens), so the drift measures the weights alone;
- greedy completions of a few prompts, side by side, for a human to read.
Blocks, per-token loss, perplexity and greedy decoding are the scoring core's (`scoring.py`), the same code the
evaluation uses. When the evaluation's `ScoredBlocks` (the adapted model's test blocks and per-token NLL, from the
lake) are passed, the HF side is not recomputed: llama.cpp scores the very blocks the eval report scored, so the
"HF perplexity" here is the eval report's adapted test perplexity, one figure. The HF side is computed once
(`hf_reference`) and shared by every GGUF of one export. The check functions at the end are pure, so the asset
checks only wrap them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpt_assets.lib.scoring import (
    block_nll,
    document_separator_id,
    document_stream,
    greedy_decode,
    pack,
    perplexity,
    token_nll,
    tokenize_texts,
)
from cpt_assets.lib.types import ScoredBlocks

log = logging.getLogger(__name__)

MIN_BLOCK_TOKENS = 16  # without eval scores: a trailing block shorter than this is dropped (unstable perplexity)


@dataclass(frozen=True, slots=True)
class Completion:
    """One prompt's greedy continuation from both models."""

    prompt: str
    hf: str
    gguf: str

    @property
    def identical(self) -> bool:
        return self.hf == self.gguf


@dataclass(frozen=True, slots=True)
class HFReference:
    """The merged HF model's side of the comparison, computed once per export."""

    model_dir: Path
    texts: tuple[str, ...]
    text_tokens: tuple[tuple[int, ...], ...]  # HF token ids of each text (no special tokens added)
    blocks: tuple[tuple[int, ...], ...]  # token blocks both models score
    token_nll: tuple[float, ...]  # negative log-likelihood of each predicted token, blocks concatenated
    perplexity: float
    prompts: tuple[str, ...]
    prompt_tokens: tuple[tuple[int, ...], ...]
    completions: tuple[str, ...]  # greedy continuation of each prompt
    eos_token_id: int | None
    max_new_tokens: int
    seconds: float
    from_eval: bool = False  # blocks and NLL are the evaluation's (ScoredBlocks), not computed here


@dataclass(frozen=True, slots=True)
class Fidelity:
    """How faithfully one GGUF file reproduces the merged HF model."""

    path: Path
    file_type: str  # "F16", "Q4_K_M", ... (from general.file_type)
    loaded: bool
    error: str  # why llama.cpp could not load it; "" when loaded
    texts: int
    tokens_compared: int  # HF tokens over all texts
    tokenization_equal: bool
    first_mismatch: str  # where llama.cpp's tokens first differ from HF's; "" when equal
    blocks: int
    scored_tokens: int
    hf_perplexity: float
    gguf_perplexity: float
    relative_drift: float  # gguf_perplexity / hf_perplexity - 1
    mean_abs_nll_diff: float  # mean |NLL_gguf - NLL_hf| per token (nats): drift that perplexity can average away
    completions: tuple[Completion, ...]
    seconds: float

    @property
    def identical_completions(self) -> int:
        return sum(c.identical for c in self.completions)


def hf_reference(
    hf_model_dir: Path,
    texts: Sequence[str],
    prompts: Sequence[str] = (),
    block_size: int = 256,
    max_blocks: int = 8,
    max_new_tokens: int = 32,
    *,
    scored: ScoredBlocks | None = None,
) -> HFReference:
    """Tokenize the texts, score the token blocks and complete the prompts with the merged HF model (float32).

    With `scored` (the evaluation's adapted-model blocks, float32), its blocks and per-token NLL are taken as they
    are (block_size and max_blocks do not apply); computed in another dtype, the same blocks are rescored in float32.
    Without it, the texts are packed as documents the evaluation's way (scoring core, separator after each) into at
    most `max_blocks` blocks of `block_size`.

    Raises:
        ValueError: the texts (or `scored`) give no block of at least MIN_BLOCK_TOKENS tokens.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    hf_model_dir = Path(hf_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_model_dir))
    text_tokens = [tuple(ids) for ids in tokenize_texts(texts, tokenizer)]
    if scored is not None:
        blocks = [list(block) for block in scored.blocks]
    else:
        stream = document_stream(text_tokens, document_separator_id(tokenizer))
        blocks = pack(stream, block_size, keep_tail=True, min_tail=MIN_BLOCK_TOKENS, max_blocks=max_blocks)
    if not blocks:
        total = sum(len(t) for t in text_tokens)
        raise ValueError(f"Verification texts give {total} tokens; at least {MIN_BLOCK_TOKENS} are needed")

    reuse = scored is not None and scored.dtype == "float32"
    model = None
    if not reuse or prompts:
        # On the GPU when there is one: a training step earlier in the same process may have patched the model
        # classes with Liger's Triton kernels, which run on CUDA tensors only.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded: Any = AutoModelForCausalLM.from_pretrained(str(hf_model_dir), dtype=torch.float32)
        model = loaded.to(device).eval()
    if reuse and scored is not None:
        nll = scored.flat_nll()
    else:
        assert model is not None
        eos_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        nll = [float(v) for row in block_nll(model, blocks, 1, int(eos_pad)) for v in row]

    eos = tokenizer.eos_token_id
    prompt_tokens = [tuple(ids) for ids in tokenize_texts(prompts, tokenizer)]
    completions: list[str] = []
    if prompt_tokens and model is not None:
        generated = greedy_decode(model, prompt_tokens, max_new_tokens, [eos])
        completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
    return HFReference(
        model_dir=hf_model_dir,
        texts=tuple(texts),
        text_tokens=tuple(text_tokens),
        blocks=tuple(tuple(b) for b in blocks),
        token_nll=tuple(nll),
        perplexity=perplexity(nll),
        prompts=tuple(prompts),
        prompt_tokens=tuple(prompt_tokens),
        completions=tuple(completions),
        eos_token_id=eos,
        max_new_tokens=max_new_tokens,
        seconds=time.perf_counter() - started,
        from_eval=reuse,
    )


def llama_file_types() -> dict[str, int]:
    """llama.cpp's file types by name ("F16", "Q4_K_M", ...), from the enum llama-cpp-python was built with."""
    import llama_cpp

    types = {"F32": int(llama_cpp.LLAMA_FTYPE_ALL_F32)}
    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[name.removeprefix("LLAMA_FTYPE_MOSTLY_")] = int(getattr(llama_cpp, name))
    return types


def file_type_name(value: int) -> str:
    """llama.cpp's name for a general.file_type value, or "unknown"."""
    return {v: k for k, v in llama_file_types().items()}.get(int(value), "unknown")


# llama.cpp's tools default to `-fa auto` (their common arguments), and llama-perplexity, which makes the KLD figures,
# resolves it to flash attention on with the CPU backend; llama-cpp-python's Llama defaults to off. On, the Python
# loader scores as the tools do, 11% faster on these CPUs (the mean NLL of the same blocks moves by 2e-5 relative).
FLASH_ATTENTION = True


def open_llama(gguf_path: Path, **kwargs):
    """llama.cpp's Llama on a GGUF file, with weight repacking off (llama.cpp's --no-repack).

    llama.cpp 0.3.36 repacks weights for AMX on CPUs that have it (these machines' Xeons) and then crashes the process
    (SIGSEGV in its AMX matmul / decode). Without the extra buffer types the plain CPU kernels run, computing the same
    values. llama-cpp-python exposes no argument for it, so the default model params it reads at construction are
    given use_extra_bufts=False for the duration of the constructor.
    """
    import llama_cpp.llama as llama_module
    from llama_cpp import Llama

    lib = llama_module.llama_cpp  # pyright: ignore[reportPrivateImportUsage]  # the ctypes module llama.py uses
    default_params = lib.llama_model_default_params

    def without_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_repack
    try:
        return Llama(model_path=str(gguf_path), **kwargs)
    finally:
        lib.llama_model_default_params = default_params


def gguf_metadata(gguf_path: Path) -> dict[str, str]:
    """A GGUF's key-value metadata as llama.cpp reads it (values as strings).

    Loads the vocabulary only: a fraction of a second, where gguf.GGUFReader spends seconds parsing a 49k-token
    vocabulary in Python. Raises ValueError if llama.cpp cannot read the file.
    """
    llm = open_llama(gguf_path, vocab_only=True, n_ctx=16, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def gguf_file_type(gguf_path: Path) -> str:
    """The llama.cpp file type recorded in a GGUF's general.file_type ("F16", "Q4_K_M", ...), or "unknown"."""
    try:
        return file_type_name(int(gguf_metadata(gguf_path).get("general.file_type", -1)))
    except ValueError:
        return "unknown"


def _first_mismatch(index: int, hf: Sequence[int], cpp: Sequence[int], decode) -> str:
    for position, (a, b) in enumerate(zip(hf, cpp, strict=False)):
        if a != b:
            return f"text {index}, token {position}: HF {a} {decode(a)!r} vs llama.cpp {b} {decode(b)!r}"
    return f"text {index}: HF has {len(hf)} tokens, llama.cpp {len(cpp)}"


def verify_gguf(
    gguf_path: Path,
    hf_model_dir: Path | None = None,
    texts: Sequence[str] = (),
    prompts: Sequence[str] = (),
    *,
    reference: HFReference | None = None,
    scored: ScoredBlocks | None = None,
    block_size: int = 256,
    max_blocks: int = 8,
    max_new_tokens: int = 32,
    n_threads: int | None = None,
) -> Fidelity:
    """Load a GGUF in llama.cpp and compare tokenization, perplexity and greedy completions with the HF model.

    Pass `reference` (from `hf_reference`) to reuse the HF side across several GGUF files; otherwise it is computed
    from `hf_model_dir`, `texts` and `prompts`. A file llama.cpp cannot load gives a Fidelity with loaded=False and
    the error, so an asset check can report it rather than the asset crashing.
    """
    gguf_path = Path(gguf_path)
    if reference is None:
        if hf_model_dir is None:
            raise ValueError("verify_gguf needs either reference= or hf_model_dir")
        reference = hf_reference(hf_model_dir, texts, prompts, block_size, max_blocks, max_new_tokens, scored=scored)
    started = time.perf_counter()
    longest_prompt = max((len(p) for p in reference.prompt_tokens), default=0)
    n_ctx = max(max(len(b) for b in reference.blocks), longest_prompt + reference.max_new_tokens) + 8
    nan = float("nan")
    failed = Fidelity(
        path=gguf_path,
        file_type="unknown",
        loaded=False,
        error="",
        texts=len(reference.texts),
        tokens_compared=sum(len(t) for t in reference.text_tokens),
        tokenization_equal=False,
        first_mismatch="",
        blocks=len(reference.blocks),
        scored_tokens=len(reference.token_nll),
        hf_perplexity=reference.perplexity,
        gguf_perplexity=nan,
        relative_drift=nan,
        mean_abs_nll_diff=nan,
        completions=(),
        seconds=0.0,
    )
    if not gguf_path.exists():
        return _replace(failed, error=f"{gguf_path} does not exist")
    try:
        llm = open_llama(
            gguf_path,
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            logits_all=True,
            verbose=False,
            n_threads=n_threads or os.cpu_count(),
            flash_attn=FLASH_ATTENTION,
        )
    except (ValueError, RuntimeError, OSError) as error:
        log.warning("llama.cpp could not load %s: %s", gguf_path, error)
        return _replace(failed, error=f"{type(error).__name__}: {error}", seconds=time.perf_counter() - started)

    try:
        file_type = file_type_name(int(llm.metadata.get("general.file_type", -1)))

        def decode(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", errors="replace")

        mismatch = ""
        for index, (text, hf_tokens) in enumerate(zip(reference.texts, reference.text_tokens, strict=True)):
            cpp_tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if list(hf_tokens) != list(cpp_tokens):
                mismatch = _first_mismatch(index, hf_tokens, cpp_tokens, decode)
                break

        nll: list[float] = []
        for block in reference.blocks:
            llm.reset()
            llm.eval(list(block))
            nll.extend(token_nll(np.asarray(llm.scores[: len(block)]), block).tolist())
        gguf_ppl = perplexity(nll)
        diffs = np.abs(np.asarray(nll) - np.asarray(reference.token_nll))

        generated = greedy_decode(
            llm, reference.prompt_tokens, reference.max_new_tokens, [llm.token_eos(), reference.eos_token_id]
        )
        completions = [
            Completion(prompt=prompt, hf=hf_text, gguf=llm.detokenize(ids).decode("utf-8", errors="replace"))
            for prompt, hf_text, ids in zip(reference.prompts, reference.completions, generated, strict=True)
        ]
    finally:
        llm.close()

    return _replace(
        failed,
        file_type=file_type,
        loaded=True,
        tokenization_equal=not mismatch,
        first_mismatch=mismatch,
        gguf_perplexity=gguf_ppl,
        relative_drift=gguf_ppl / reference.perplexity - 1.0,
        mean_abs_nll_diff=float(diffs.mean()) if len(diffs) else nan,
        completions=tuple(completions),
        seconds=time.perf_counter() - started,
    )


def _replace(fidelity: Fidelity, **changes) -> Fidelity:
    from dataclasses import replace

    return replace(fidelity, **changes)


# ---- pure checks: (passed, description) ------------------------------------------------------------------------
def gguf_loads(fidelity: Fidelity) -> tuple[bool, str]:
    if fidelity.loaded:
        return True, f"{fidelity.path.name} ({fidelity.file_type}) loads in llama.cpp"
    return False, f"{fidelity.path.name} does not load in llama.cpp: {fidelity.error}"


def tokenization_matches(fidelity: Fidelity) -> tuple[bool, str]:
    if not fidelity.loaded:
        return False, f"{fidelity.path.name} did not load, tokenization not compared"
    if fidelity.tokenization_equal:
        return True, f"llama.cpp tokenizes {fidelity.texts} texts ({fidelity.tokens_compared} tokens) exactly as HF"
    return False, f"llama.cpp tokenizes differently from HF: {fidelity.first_mismatch}"


def perplexity_within(fidelity: Fidelity, tolerance: float | None) -> tuple[bool, str]:
    """Relative perplexity drift within `tolerance` (0.01 = 1%); None means report only."""
    if not fidelity.loaded:
        return False, f"{fidelity.path.name} did not load, perplexity not measured"
    figures = (
        f"{fidelity.file_type}: perplexity {fidelity.gguf_perplexity:.3f} vs HF {fidelity.hf_perplexity:.3f} "
        f"({fidelity.relative_drift:+.2%}) on {fidelity.scored_tokens} tokens"
    )
    if tolerance is None:
        return True, f"{figures}; reported, no bound"
    if not math.isfinite(fidelity.relative_drift):
        return False, f"{figures}; not finite"
    passed = abs(fidelity.relative_drift) <= tolerance
    return passed, f"{figures}; bound {tolerance:.2%} {'met' if passed else 'exceeded'}"


def fidelity_table(fidelities: Sequence[Fidelity]) -> list[dict[str, object]]:
    """One row per GGUF file, for MetadataValue.table or markdown."""
    rows = []
    for f in fidelities:
        rows.append(
            {
                "file": f.path.name,
                "type": f.file_type,
                "loads": f.loaded,
                "tokenization": "equal" if f.tokenization_equal else (f.first_mismatch or f.error or "-"),
                "hf_ppl": round(f.hf_perplexity, 4),
                "gguf_ppl": round(f.gguf_perplexity, 4) if f.loaded else None,
                "drift_pct": round(100 * f.relative_drift, 3) if f.loaded else None,
                "mean_abs_nll_diff": round(f.mean_abs_nll_diff, 5) if f.loaded else None,
                "same_completions": f"{f.identical_completions}/{len(f.completions)}",
                "seconds": round(f.seconds, 1),
            }
        )
    return rows


def fidelity_markdown(fidelities: Sequence[Fidelity]) -> str:
    """The fidelity table and the completions side by side, as markdown."""
    rows = fidelity_table(fidelities)
    if not rows:
        return "_no GGUF files verified_"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[k]).replace("|", "\\|") for k in header) + " |" for row in rows]
    for f in fidelities:
        if f.completions:
            lines += ["", f"**Greedy completions, {f.file_type}**", "", "| prompt | HF | GGUF |", "|---|---|---|"]
            for c in f.completions:
                cells = (c.prompt, c.hf, c.gguf)
                lines.append("| " + " | ".join(s.replace("|", "\\|").replace("\n", " ") for s in cells) + " |")
    return "\n".join(lines)
