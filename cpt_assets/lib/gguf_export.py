"""Write the merged model as GGUF files that llama.cpp and Ollama run, with no llama.cpp checkout.

The F16 file is written with the `gguf` package the way llama.cpp's convert_hf_to_gguf.py does for Llama models
(LlamaModel + TextModel.set_gguf_parameters + get_vocab_base / _set_vocab_gpt2):
- q_proj and k_proj rows are permuted per head: HF's Llama rotates the two halves of each head (rotate_half), while
  llama.cpp's LLM_ARCH_LLAMA uses ROPE_TYPE_NORM, which rotates consecutive pairs. Skipping it loads fine and
  answers wrong.
- the tokenizer is written as a GPT-2 style BPE vocabulary with its merges, special tokens and chat template, plus
  the `tokenizer.ggml.pre` name that tells llama.cpp which pre-tokenizer regex to use. The name is found the way
  convert_hf_to_gguf.py finds it: hash the tokens of a fixed probe text. An unknown hash fails here, because a wrong
  pre-tokenizer gives a GGUF that loads but tokenizes differently (llama.cpp #9927).
Quantization (Q4_K_M by default) goes through llama.cpp's own quantizer, `llama_model_quantize` in llama-cpp-python.

Provenance (base model and its sha256, adapter and training config hashes, split hashes, llama.cpp version) goes into
the file as key-value metadata, under general.* where GGUF has a key for it and under `cpt.*` otherwise, so a GGUF
found on a disk can be traced back to its run with `read_provenance`.

Every file is written under a temporary name and renamed; bad input (unknown quantization type, unsupported
architecture or pre-tokenizer) fails before anything is written.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpt_assets.lib.gguf_verify import (
    Fidelity,
    fidelity_markdown,
    fidelity_table,
    file_type_name,
    gguf_metadata,
    hf_reference,
    llama_file_types,
    verify_gguf,
)
from cpt_assets.lib.lake import atomic_path, sha256_file
from cpt_assets.lib.types import ScoredBlocks

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # HF architectures this writer converts (model_type "llama")
PROVENANCE_NAMESPACE = "cpt"
# Types llama.cpp refuses to produce without an importance matrix (llama-quantize says so); we have none.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})
# Types that make no sense as a quantization of an F16 file here (F32 grows it; MXFP4_MOE is for MoE experts).
NOT_QUANTIZATIONS = frozenset({"F32", "MXFP4_MOE"})

# convert_hf_to_gguf.py's get_vocab_base_pre: sha256 of str(tokenizer.encode(PROBE)) -> llama.cpp pre-tokenizer.
# Only the BPE tokenizers a Llama-architecture model here can carry are listed; others fail loudly.
PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}


def quantization_types() -> list[str]:
    """File types `quantize_gguf` accepts: llama.cpp's ftype list, less those needing an importance matrix."""
    return sorted(set(llama_file_types()) - NEEDS_IMATRIX - NOT_QUANTIZATIONS - {"F16"})


def validate_quantization(qtype: str) -> str:
    """The canonical (upper-case) name of a quantization type, or ValueError naming it and listing valid ones."""
    name = str(qtype).strip().upper()
    valid = quantization_types()
    if name in NEEDS_IMATRIX:
        raise ValueError(
            f"GGUF type {qtype!r} needs an importance matrix, which this export does not make; "
            f"valid: {', '.join(valid)}"
        )
    if name not in valid:
        raise ValueError(f"Unknown GGUF quantization type {qtype!r}; llama.cpp knows: {', '.join(valid)}")
    return name


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling defaults written into the Modelfile (and general.sampling.* in the GGUF)."""

    temperature: float = 0.7  # SmolLM2's card suggests a low temperature for its instruct model
    top_p: float = 0.9  # nucleus sampling
    top_k: int = 40  # llama.cpp's default
    repeat_penalty: float = 1.1  # small models loop without one

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 5:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")


DEFAULT_PROMPTS = (
    "The key words MUST, MUST NOT and SHOULD in a specification",
    "A cryptographic hash function is",
    "<|im_start|>user\nWhat does TLS protect against?<|im_end|>\n<|im_start|>assistant\n",
)


@dataclass(frozen=True)
class GGUFExportConfig:
    """What the gguf_model asset writes and how strictly it checks it."""

    quantizations: tuple[str, ...] = ("Q4_K_M",)  # llama.cpp file types made from the F16 file (Q8_0, Q5_K_M, ...)
    f16_perplexity_tolerance: float = 0.01  # F16 perplexity may drift at most this much (relative) from the HF model
    quantized_perplexity_tolerance: float | None = None  # bound for quantized files; None: reported, not checked
    context_length: int = 2048  # num_ctx in the Modelfile
    block_size: int = 256  # tokens per perplexity block
    max_blocks: int = 8  # test-split blocks both models score
    max_new_tokens: int = 32  # greedy completion length per prompt
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # prompts whose greedy completions are stored side by side
    sampling: SamplingParams = field(default_factory=SamplingParams)  # Modelfile PARAMETERs
    modelfile_type: str | None = None  # file type the Modelfile points at; None: the first quantization
    threads: int | None = None  # llama.cpp threads (quantize and verify); None: all cores

    def __post_init__(self) -> None:
        if isinstance(self.quantizations, str):
            object.__setattr__(self, "quantizations", (self.quantizations,))
        names = tuple(validate_quantization(q) for q in self.quantizations)
        if len(set(names)) != len(names):
            raise ValueError(f"quantizations lists a type twice: {self.quantizations}")
        object.__setattr__(self, "quantizations", names)
        if not 0 < self.f16_perplexity_tolerance < 1:
            raise ValueError(f"f16_perplexity_tolerance must be in (0, 1), got {self.f16_perplexity_tolerance}")
        if self.quantized_perplexity_tolerance is not None and self.quantized_perplexity_tolerance <= 0:
            raise ValueError(f"quantized_perplexity_tolerance must be > 0, got {self.quantized_perplexity_tolerance}")
        if self.context_length < 16:
            raise ValueError(f"context_length must be >= 16, got {self.context_length}")
        if self.block_size < 16 or self.max_blocks < 1:
            raise ValueError(f"block_size must be >= 16 and max_blocks >= 1, got {self.block_size}, {self.max_blocks}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.modelfile_type is not None:
            wanted = self.modelfile_type.upper()
            if wanted not in ("F16", *names):
                raise ValueError(f"modelfile_type {self.modelfile_type!r} is not F16 or one of {names}")
            object.__setattr__(self, "modelfile_type", wanted)

    def tolerance_for(self, file_type: str) -> float | None:
        """The perplexity bound that applies to a file type."""
        return self.f16_perplexity_tolerance if file_type.upper() == "F16" else self.quantized_perplexity_tolerance


@dataclass(frozen=True)
class Provenance:
    """Where a GGUF came from; written as KV metadata so the file can be traced back to its run."""

    name: str  # general.name, e.g. "cpt-smollm2-135m-instruct"
    base_model_name: str  # general.base_model.0.name
    base_model_sha256: str = ""  # sha256 of the base model's weights
    adapter_name: str = ""  # the adapter's name or folder (e.g. the lora_adapter asset's run)
    adapter_config_sha256: str = ""  # sha256 of adapter_config.json
    training_config_sha256: str = ""  # hash of the training config used
    merged_model_sha256: str = ""  # sha256 of the merged model's safetensors
    split_sha256: Mapping[str, str] = field(default_factory=dict)  # corpus split name -> content hash
    run_id: str = ""  # the orchestrator's run id, if any
    extra: Mapping[str, str] = field(default_factory=dict)  # further cpt.* string keys

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("Provenance.name must not be empty")
        if not self.base_model_name.strip():
            raise ValueError("Provenance.base_model_name must not be empty")
        for key in (*self.split_sha256, *self.extra):
            if not re.fullmatch(r"[a-z0-9_]+", key):
                raise ValueError(f"Provenance key {key!r} must match [a-z0-9_]+")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Provenance:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown provenance field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_kv(self) -> dict[str, str]:
        """The cpt.* keys (the general.* ones are written by the writer's own methods)."""
        ns = PROVENANCE_NAMESPACE
        kv = {
            f"{ns}.base_model.name": self.base_model_name,
            f"{ns}.base_model.sha256": self.base_model_sha256,
            f"{ns}.adapter.name": self.adapter_name,
            f"{ns}.adapter.config_sha256": self.adapter_config_sha256,
            f"{ns}.training.config_sha256": self.training_config_sha256,
            f"{ns}.merged_model.sha256": self.merged_model_sha256,
            f"{ns}.run_id": self.run_id,
        }
        kv |= {f"{ns}.split.{split}.sha256": digest for split, digest in sorted(self.split_sha256.items())}
        kv |= {f"{ns}.{key}": str(value) for key, value in sorted(self.extra.items())}
        return {key: value for key, value in kv.items() if value}


def llama_cpp_version() -> str:
    """The vendored llama.cpp's ggml version and commit ("0.25.3 (1a2b3c4)"), as compiled into llama-cpp-python.

    llama.h has no version call; ggml.h's ggml_version/ggml_commit are the build's own record of what it is.
    """
    from llama_cpp import _ggml

    def call(name: str) -> str:
        function = getattr(_ggml.libggml, name, None)
        if function is None:
            return "unknown"
        function.restype, function.argtypes = ctypes.c_char_p, []
        return (function() or b"unknown").decode()

    return f"{call('ggml_version')} ({call('ggml_commit')})"


def toolchain_versions() -> dict[str, str]:
    """Versions of the tools that make and check the file, for provenance."""
    from importlib.metadata import version

    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__, "llama_cpp": llama_cpp_version(), "gguf": version("gguf")}


@dataclass(frozen=True, slots=True)
class GGUFFile:
    """One written GGUF file and its facts."""

    path: Path
    file_type: str  # "F16", "Q4_K_M", ...
    bytes: int
    sha256: str
    parameters: int  # elements over all tensors
    bits_per_weight: float  # file bytes * 8 / parameters (metadata and vocabulary included)
    tensor_types: dict[str, int]  # ggml type -> tensor count, e.g. {"Q4_K": 150, "Q6_K": 31, "F32": 61}
    seconds: float  # conversion or quantization time


def describe_gguf(path: Path, seconds: float = 0.0) -> GGUFFile:
    """Size, hash, parameter count, bits per weight and tensor types of a GGUF file."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(str(path))
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = reader.get_field(gguf.Keys.General.FILE_TYPE)
    size = path.stat().st_size
    return GGUFFile(
        path=path,
        file_type=file_type_name(int(file_type.contents())) if file_type is not None else "unknown",
        bytes=size,
        sha256=sha256_file(path),
        parameters=parameters,
        bits_per_weight=size * 8 / parameters if parameters else float("nan"),
        tensor_types=dict(sorted(types.items())),
        seconds=seconds,
    )


# ---- F16 writer ---------------------------------------------------------------------------------------------------
def _load_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"Model folder {model_dir} has no config.json")
    return json.loads(config_path.read_text())


def check_architecture(config: Mapping[str, Any], model_dir: Path) -> None:
    """ValueError unless the model is a plain Llama this writer converts exactly."""
    architecture = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if architecture not in SUPPORTED_ARCHITECTURES or config.get("model_type") != "llama":
        raise ValueError(
            f"Model {model_dir} has architecture {architecture!r} (model_type {config.get('model_type')!r}); "
            f"the GGUF writer supports only {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, Mapping) else "default"
    if rope_type not in (None, "default"):
        raise ValueError(f"Model {model_dir} uses RoPE scaling {rope_type!r}, which the GGUF writer does not convert")


def _rope_theta(config: Mapping[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's BPE pre-tokenizer, identified by the probe hash; ValueError if unknown."""
    digest = hashlib.sha256(str(tokenizer.encode(PRE_TOKENIZER_PROBE)).encode()).hexdigest()
    if digest not in KNOWN_PRE_TOKENIZERS:
        raise ValueError(
            f"Unrecognised BPE pre-tokenizer (probe hash {digest}); llama.cpp would tokenize differently. "
            f"Known: {sorted(set(KNOWN_PRE_TOKENIZERS.values()))}"
        )
    return KNOWN_PRE_TOKENIZERS[digest]


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types as convert_hf_to_gguf.py's get_vocab_base writes them."""
    import gguf

    reverse = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise ValueError(f"Tokenizer has token id {max(reverse)} but the model's vocab_size is {vocab_size}")
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = reverse.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            special = decoder[token_id].special if token_id in decoder else False
            types.append(gguf.TokenType.CONTROL if special or looks_special else gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            types.append(gguf.TokenType.NORMAL)
            tokens.append(token)
    return tokens, types


def permute_qk(weights, n_head: int, n_head_kv: int | None = None):
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's half-split RoPE rows to llama.cpp's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensor_plan(model_dir: Path, config: Mapping[str, Any]) -> list[tuple[Path, str, str]]:
    """(file, HF name, GGUF name) for every tensor to write; ValueError naming any tensor llama.cpp has no slot for."""
    import gguf
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"Model folder {model_dir} has no *.safetensors weights")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", False))
    plan, unmapped = [], []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / shared with token_embd
                new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
                if new_name is None:
                    unmapped.append(name)
                else:
                    plan.append((file, name, new_name))
    if unmapped:
        raise ValueError(f"Model {model_dir} has tensors with no llama.cpp counterpart: {unmapped[:10]}")
    # The q/k permutation reshapes rows per head: catch a config that disagrees with the weights now, not mid-write.
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    wrong = []
    for file, name, _ in plan:
        heads = n_head if ".q_proj." in name else n_head_kv if ".k_proj." in name else None
        if heads is None:
            continue
        with safe_open(str(file), framework="pt") as handle:
            rows = handle.get_slice(name).get_shape()[0]
        if rows != heads * head_dim or head_dim % 2:
            wrong.append(f"{name}: {rows} rows, config says {heads} heads x {head_dim}")
    if wrong:
        raise ValueError(f"Model {model_dir} weights disagree with its config: {wrong[:5]}")
    return plan


@dataclass(frozen=True)
class ConversionPlan:
    """Everything write_f16_gguf needs, gathered and checked before a byte is written."""

    model_dir: Path
    config: Mapping[str, Any]
    tensors: list[tuple[Path, str, str]]  # (safetensors file, HF name, GGUF name)
    pre_tokenizer: str  # llama.cpp's pre-tokenizer name ("smollm")
    tokens: list[str]
    token_types: list[int]
    special_vocab: Any  # gguf.SpecialVocab: merges, special token ids, chat template
    add_bos: bool  # whether HF adds BOS to plain text (SmolLM2 does not)


def plan_conversion(model_dir: Path) -> ConversionPlan:
    """Check that `model_dir` converts exactly and gather what the writer needs; reads, never writes.

    Raises:
        FileNotFoundError: config or weights missing.
        ValueError: unsupported architecture, RoPE scaling, pre-tokenizer, vocabulary or tensor, naming it.
    """
    import gguf
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    check_architecture(config, model_dir)
    tensors = _tensor_plan(model_dir, config)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pre = pre_tokenizer_name(tokenizer)
    vocab_size = int(config["vocab_size"])
    tokens, token_types = _vocabulary(tokenizer, vocab_size)
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special_vocab.merges:
        raise ValueError(f"Tokenizer in {model_dir} has no BPE merges (tokenizer.json); cannot write a gpt2 vocab")
    # Whether HF adds BOS to plain text decides llama.cpp's add_bos_token.
    probe = "a"
    add_bos = tokenizer(probe)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]
    special_vocab.add_special_token["bos"] = add_bos
    return ConversionPlan(model_dir, config, tensors, pre, tokens, token_types, special_vocab, add_bos)


def write_f16_gguf(
    model_dir: Path,
    out_path: Path,
    provenance: Provenance | Mapping[str, Any],
    sampling: SamplingParams | None = None,
) -> GGUFFile:
    """Convert a HF Llama folder (safetensors + tokenizer) to an F16 GGUF with tokenizer and provenance metadata.

    Args:
        model_dir: merged (or base) model folder: config.json, *.safetensors, tokenizer files.
        out_path: the .gguf to write; replaced atomically, untouched if anything fails.
        provenance: a Provenance or a mapping of its fields.
        sampling: recommended sampling defaults to record as general.sampling.*; omitted if None.

    Raises:
        FileNotFoundError: config or weights missing.
        ValueError: unsupported architecture, RoPE scaling, pre-tokenizer or tensor (before anything is written).
    """
    import gguf
    import torch
    from safetensors import safe_open

    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if not isinstance(provenance, Provenance):
        provenance = Provenance.from_mapping(provenance)
    conversion = plan_conversion(model_dir)
    config, plan, pre = conversion.config, conversion.tensors, conversion.pre_tokenizer
    vocab_size = int(config["vocab_size"])

    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    versions = toolchain_versions()

    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(path=str(tmp), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(provenance.name)
        adapted = "continually pretrained with LoRA" if provenance.adapter_config_sha256 else "converted"
        writer.add_description(f"{provenance.base_model_name} {adapted} by cpt_assets")
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, provenance.base_model_name)
        # Architecture: TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters.
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_vocab_size(vocab_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        # Tokenizer: _set_vocab_gpt2.
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(conversion.tokens)
        writer.add_token_types(conversion.token_types)
        conversion.special_vocab.add_to_gguf(writer, quiet=True)
        if sampling is not None:
            writer.add_sampling_temp(sampling.temperature)
            writer.add_sampling_top_p(sampling.top_p)
            writer.add_sampling_top_k(sampling.top_k)
            writer.add_sampling_penalty_repeat(sampling.repeat_penalty)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in provenance.to_kv().items():
            writer.add_string(key, value)
        for tool, version in versions.items():
            writer.add_string(f"{PROVENANCE_NAMESPACE}.version.{tool}", version)
        writer.add_string(f"{PROVENANCE_NAMESPACE}.created_at", datetime.now(UTC).isoformat(timespec="seconds"))

        for file, name, new_name in plan:
            with safe_open(str(file), framework="pt") as handle:
                data = handle.get_tensor(name).to(torch.float32)
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute_qk(data, n_head, n_head)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute_qk(data, n_head, n_head_kv)
            array = data.numpy()
            # As prepare_tensors does: 1-D tensors and norms stay F32, 2-D weights become F16.
            if array.ndim >= 2 and name.endswith(".weight") and not new_name.endswith("_norm.weight"):
                writer.add_tensor(new_name, array.astype("float16"), raw_dtype=gguf.GGMLQuantizationType.F16)
            else:
                writer.add_tensor(new_name, array, raw_dtype=gguf.GGMLQuantizationType.F32)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    seconds = time.perf_counter() - started
    log.info("Wrote %s (%d tensors, pre-tokenizer %s) in %.1fs", out_path, len(plan), pre, seconds)
    return describe_gguf(out_path, seconds)


# ---- quantization -------------------------------------------------------------------------------------------------
def quantize_gguf(f16_path: Path, out_path: Path, qtype: str, threads: int | None = None) -> GGUFFile:
    """Quantize an F16 GGUF with llama.cpp's quantizer (through llama-cpp-python); the KV metadata is carried over.

    Raises:
        ValueError: unknown quantization type (before anything is written).
        FileNotFoundError: the F16 file is missing.
        RuntimeError: llama.cpp reported a failure (nothing is left at out_path).
    """
    import llama_cpp

    name = validate_quantization(qtype)
    f16_path, out_path = Path(f16_path), Path(out_path)
    if not f16_path.exists():
        raise FileNotFoundError(f"F16 GGUF {f16_path} does not exist")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_file_types()[name]
    params.nthread = threads or os.cpu_count() or 1
    started = time.perf_counter()
    with atomic_path(out_path) as tmp:
        code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if code != 0:
            raise RuntimeError(f"llama.cpp failed to quantize {f16_path} to {name} (return code {code})")
    seconds = time.perf_counter() - started
    log.info("Quantized %s to %s in %.1fs", f16_path.name, name, seconds)
    return describe_gguf(out_path, seconds)


# ---- provenance ---------------------------------------------------------------------------------------------------
def read_provenance(gguf_path: Path) -> dict[str, str]:
    """The general.* and cpt.* key-value metadata of a GGUF file (as strings): where it came from.

    Raises:
        FileNotFoundError: no such file.
        ValueError: llama.cpp cannot read it.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    metadata = gguf_metadata(gguf_path)
    keys = sorted(k for k in metadata if k.startswith(("general.", f"{PROVENANCE_NAMESPACE}.")))
    return {key: metadata[key] for key in keys}


# ---- Ollama Modelfile ---------------------------------------------------------------------------------------------
# Ollama's Go-template form of the ChatML template SmolLM2 uses; the default system prompt goes to SYSTEM, which
# Ollama puts first in .Messages when the user sends none (the Jinja template's `loop.first` branch).
CHATML_OLLAMA_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(?P<system>.*?)<\|im_end\|>", re.DOTALL)


def write_modelfile(
    gguf_path: Path,
    out_path: Path,
    context_length: int,
    stop_tokens: Sequence[str] = ("<|im_end|>", "<|endoftext|>"),
    params: SamplingParams | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write an Ollama Modelfile that runs `gguf_path` (referenced relative to the Modelfile's folder).

    Args:
        gguf_path: the GGUF the Modelfile points at.
        out_path: the Modelfile to write (atomically).
        context_length: num_ctx.
        stop_tokens: PARAMETER stop entries.
        params: sampling defaults; SamplingParams() if None.
        chat_template: the model's Jinja chat template; read from the GGUF if None. A ChatML template becomes
            Ollama's TEMPLATE (and its default system prompt SYSTEM); any other is left to Ollama's own detection.
    """
    gguf_path, out_path = Path(gguf_path), Path(out_path)
    params = params or SamplingParams()
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if chat_template is None:
        chat_template = gguf_metadata(gguf_path).get("tokenizer.chat_template", "")
    try:
        source = os.path.relpath(gguf_path, out_path.parent)
    except ValueError:  # another drive (Windows)
        source = str(gguf_path)
    lines = [
        f"# Ollama Modelfile for {gguf_path.name}, written by cpt_assets.",
        f"# ollama create <name> -f {out_path.name}",
        f"FROM ./{source}" if not os.path.isabs(source) else f"FROM {source}",
    ]
    if "<|im_start|>" in chat_template:
        lines.append(f'TEMPLATE """{CHATML_OLLAMA_TEMPLATE}"""')
        if match := _DEFAULT_SYSTEM.search(chat_template):
            lines.append(f'SYSTEM """{match["system"].strip()}"""')
    elif chat_template:
        log.warning("Chat template of %s is not ChatML; the Modelfile leaves TEMPLATE to Ollama", gguf_path.name)
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += [
        f"PARAMETER num_ctx {context_length}",
        f"PARAMETER temperature {params.temperature}",
        f"PARAMETER top_p {params.top_p}",
        f"PARAMETER top_k {params.top_k}",
        f"PARAMETER repeat_penalty {params.repeat_penalty}",
    ]
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_path


# ---- the whole export ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFExport:
    """What the gguf_model asset reports: files, their fidelity, the Modelfile and the provenance written."""

    folder: Path
    files: tuple[GGUFFile, ...]  # F16 first, then each quantization
    fidelity: tuple[Fidelity, ...]  # same order as files
    modelfile: Path
    provenance: dict[str, Any]  # as read back from the F16 file
    hf_perplexity: float
    reference_seconds: float  # HF side of the verification

    def file(self, file_type: str) -> GGUFFile:
        return next(f for f in self.files if f.file_type == file_type.upper())

    def table(self) -> list[dict[str, object]]:
        """Files and fidelity in one table."""
        rows = []
        for gguf_file, row in zip(self.files, fidelity_table(self.fidelity), strict=True):
            rows.append(
                {
                    **row,
                    "mb": round(gguf_file.bytes / 1e6, 2),
                    "bits_per_weight": round(gguf_file.bits_per_weight, 3),
                    "seconds": round(gguf_file.seconds, 2),
                    "sha256": gguf_file.sha256[:16],
                }
            )
        return rows

    def markdown(self) -> str:
        return fidelity_markdown(self.fidelity)

    def to_dict(self) -> dict[str, Any]:
        """Files, fidelity table, greedy completions side by side and provenance, JSON-ready."""
        return {
            "files": [asdict(f) | {"path": str(f.path)} for f in self.files],
            "table": self.table(),
            "hf_perplexity": self.hf_perplexity,
            "completions": completions_side_by_side(self.fidelity),
            "modelfile": str(self.modelfile),
            "provenance": self.provenance,
        }


def completions_side_by_side(fidelities: Sequence[Fidelity]) -> list[dict[str, str]]:
    """One row per prompt: the HF model's greedy completion and each GGUF file's, keyed by file type."""
    rows: list[dict[str, str]] = []
    for fidelity in fidelities:
        for index, completion in enumerate(fidelity.completions):
            if index == len(rows):
                rows.append({"prompt": completion.prompt, "HF": completion.hf})
            rows[index][fidelity.file_type] = completion.gguf
    return rows


VERIFICATION_FILE = "verification.json"  # beside the GGUF files: how each one compared with the HF model


def gguf_file_name(stem: str, file_type: str) -> str:
    """The one place the GGUF file names are spelled: `<stem>-<TYPE>.gguf`."""
    return f"{stem}-{file_type.upper()}.gguf"


def export_gguf(
    model_dir: Path,
    out_dir: Path,
    provenance: Provenance | Mapping[str, Any],
    texts: Sequence[str],
    config: GGUFExportConfig | None = None,
    stem: str = "model",
    scored: ScoredBlocks | None = None,
) -> GGUFExport:
    """F16 GGUF, its quantizations, verification against the HF model, and an Ollama Modelfile, in `out_dir`.

    Bad input (unsupported architecture, pre-tokenizer or tensor, no usable text; unknown quantization types fail in
    GGUFExportConfig) raises before anything is written. The folder is built beside `out_dir` and swapped in only
    when every file is written, so a failed export leaves the previous one intact. Verification results never fail
    the export: they are returned (and written to verification.json beside the files) for the asset checks.

    Args:
        model_dir: merged HF model folder.
        out_dir: folder for the GGUF files, the Modelfile and verification.json.
        provenance: what to record inside every GGUF.
        texts: held-out texts (test split) for tokenization and perplexity comparison.
        config: export settings; GGUFExportConfig() if None.
        stem: file name stem.
        scored: the evaluation's scored test blocks (lake.read_scored_blocks); llama.cpp then scores those very
            blocks and the HF perplexity is the eval report's (block_size/max_blocks do not apply).
    """
    config = config or GGUFExportConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not isinstance(provenance, Provenance):
        provenance = Provenance.from_mapping(provenance)
    # Every input check runs before the (slow) HF reference and before anything is written.
    plan_conversion(model_dir)
    if not texts or not any(str(text).strip() for text in texts):
        raise ValueError("export_gguf needs at least one non-empty verification text")

    reference = hf_reference(
        model_dir, texts, config.prompts, config.block_size, config.max_blocks, config.max_new_tokens, scored=scored
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        f16 = write_f16_gguf(model_dir, tmp / gguf_file_name(stem, "F16"), provenance, config.sampling)
        files = [f16]
        for qtype in config.quantizations:
            files.append(quantize_gguf(f16.path, tmp / gguf_file_name(stem, qtype), qtype, config.threads))
        fidelity = [verify_gguf(f.path, reference=reference, n_threads=config.threads) for f in files]
        target_type = config.modelfile_type or (config.quantizations[0] if config.quantizations else "F16")
        target = next(f for f in files if f.file_type == target_type)
        write_modelfile(target.path, tmp / "Modelfile", config.context_length, params=config.sampling)
        result = GGUFExport(
            folder=out_dir,
            files=tuple(replace(f, path=out_dir / f.path.name) for f in files),
            fidelity=tuple(replace(f, path=out_dir / f.path.name) for f in fidelity),
            modelfile=out_dir / "Modelfile",
            provenance=read_provenance(f16.path),
            hf_perplexity=reference.perplexity,
            reference_seconds=reference.seconds,
        )
        # The verification travels with the files, so a copied folder still says how faithful each file is.
        (tmp / VERIFICATION_FILE).write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    return result
