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
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpt_assets.lib.gguf_fidelity import (
    Imatrix,
    QuantFidelity,
    check_imatrix,
    choose_type,
    chunk_plan,
    compute_imatrix,
    kl_divergence,
    kld_base,
    kld_markdown,
    size_kld_plot,
    write_text,
)
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
from cpt_assets.lib.lake import GGUF_VERIFICATION, IMATRIX_FILE, KLD_PLOT_FILE, MODELFILE, atomic_path, sha256_file
from cpt_assets.lib.llama_tools import (
    LlamaCpp,
    LlamaToolError,
    installed_version,
    llama_cpp_sources,
    python_env,
    run_tool,
)
from cpt_assets.lib.types import ScoredBlocks

log = logging.getLogger(__name__)

PROVENANCE_NAMESPACE = "cpt"
# Types llama-quantize refuses to produce without an importance matrix.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})
# Candidates the type is chosen from by KLD (hidden size 576 makes K-quants fall back per tensor: names mislead).
CANDIDATE_TYPES = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
DEFAULT_MAX_MEAN_KLD = 0.05  # set from the first measurements on SmolLM2-135M, with a margin (see the bench)
# Types that make no sense as a quantization of an F16 file here (F32 grows it; MXFP4_MOE is for MoE experts).
NOT_QUANTIZATIONS = frozenset({"F32", "MXFP4_MOE"})


def quantization_types(imatrix: bool = False) -> list[str]:
    """File types `quantize_gguf` accepts: llama.cpp's ftype list; those needing an importance matrix only with one."""
    excluded = NOT_QUANTIZATIONS | {"F16"} | (frozenset() if imatrix else NEEDS_IMATRIX)
    return sorted(set(llama_file_types()) - excluded)


def validate_quantization(qtype: str, imatrix: bool = False) -> str:
    """The canonical (upper-case) name of a quantization type, or ValueError naming it and listing valid ones.

    `imatrix`: whether an importance matrix will be available; types in NEEDS_IMATRIX are refused without one.
    """
    name = str(qtype).strip().upper()
    valid = quantization_types(imatrix)
    if name in NEEDS_IMATRIX and not imatrix:
        raise ValueError(
            f"GGUF type {qtype!r} needs an importance matrix and none is available (use_imatrix is off); "
            f"valid without one: {', '.join(valid)}"
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

    quantizations: tuple[str, ...] = CANDIDATE_TYPES  # llama.cpp file types tried (each measured by KLD vs F16)
    use_imatrix: bool = True  # also quantize with a domain imatrix (train split); keep the variant with lower KLD
    imatrix_max_tokens: int = 8192  # train-split tokens llama-imatrix reads (whole chunks)
    kld_context: int = 512  # llama-perplexity context; shorter test texts get a smaller one
    kld_max_tokens: int = 8192  # test-split tokens scored for KLD (whole chunks; each scores its second half)
    max_mean_kld: float = DEFAULT_MAX_MEAN_KLD  # bound on mean KLD vs F16: the check and the choice of type
    max_p99_kld: float | None = None  # optional bound on the 99th-percentile KLD
    f16_perplexity_tolerance: float = 0.01  # F16 perplexity may drift at most this much (relative) from the HF model
    quantized_perplexity_tolerance: float | None = None  # bound for quantized files; None: reported, not checked
    context_length: int = 2048  # num_ctx in the Modelfile
    block_size: int = 256  # tokens per perplexity block
    max_blocks: int = 8  # test-split blocks both models score
    max_new_tokens: int = 32  # greedy completion length per prompt
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # prompts whose greedy completions are stored side by side
    sampling: SamplingParams = field(default_factory=SamplingParams)  # Modelfile PARAMETERs
    modelfile_type: str | None = None  # file type the Modelfile points at; None: the smallest within max_mean_kld
    threads: int | None = None  # llama.cpp threads (quantize and verify); None: all cores

    def __post_init__(self) -> None:
        if isinstance(self.quantizations, str):
            object.__setattr__(self, "quantizations", (self.quantizations,))
        names = tuple(validate_quantization(q, imatrix=self.use_imatrix) for q in self.quantizations)
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
        if self.kld_context < 128 or self.kld_max_tokens < 2 * 128 or self.imatrix_max_tokens < 128:
            raise ValueError("kld_context must be >= 128 and kld_max_tokens, imatrix_max_tokens >= 256, 128")
        if self.max_mean_kld <= 0 or (self.max_p99_kld is not None and self.max_p99_kld <= 0):
            raise ValueError(f"KLD bounds must be > 0, got {self.max_mean_kld}, {self.max_p99_kld}")
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

    return {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": llama_cpp_version(),
        "llama_cpp_sources": f"llama-cpp-python {installed_version()} sdist (converter, gguf-py, tools)",
        "gguf": version("gguf"),
    }


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


# ---- conversion through llama.cpp's convert_hf_to_gguf.py ----------------------------------------------------------
def _load_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"Model folder {model_dir} has no config.json")
    return json.loads(config_path.read_text())


@functools.cache
def supported_architectures(converter: Path) -> frozenset[str]:
    """The HF text architectures llama.cpp's converter registers (`convert_hf_to_gguf.py --print-supported-models`)."""
    sources = LlamaCpp(version="", source=Path(converter).parent)
    output = run_tool([sys.executable, converter, "--print-supported-models"], env=python_env(sources), timeout=120)
    names, in_text = set(), False
    for line in output.splitlines():
        if line.strip().endswith("models:"):
            in_text = line.strip() == "TEXT models:"
        elif in_text and line.strip().startswith("- "):
            names.add(line.strip()[2:])
    if not names:
        raise LlamaToolError(f"{converter} listed no supported architectures:\n{output[-2000:]}")
    return frozenset(names)


def check_convertible(model_dir: Path, sources: LlamaCpp) -> str:
    """The model's HF architecture if llama.cpp's converter supports it; reads, never writes.

    Raises:
        FileNotFoundError: config.json or the *.safetensors weights are missing.
        ValueError: the architecture is not one llama.cpp converts, naming it.
    """
    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    architecture = (config.get("architectures") or [None])[0]
    if architecture is None:
        raise ValueError(f'Model {model_dir}: config.json names no architecture ("architectures" is empty)')
    if architecture not in supported_architectures(sources.converter):
        raise ValueError(
            f"Model {model_dir} has architecture {architecture!r}, which llama.cpp {sources.version}'s "
            f"convert_hf_to_gguf.py does not convert"
        )
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"Model folder {model_dir} has no *.safetensors weights")
    return architecture


def provenance_metadata(provenance: Provenance, sampling: SamplingParams | None) -> dict[str, Any]:
    """Our keys for the converted file: general.* naming, sampling defaults, cpt.* provenance, tool versions."""
    adapted = "continually pretrained with LoRA" if provenance.adapter_config_sha256 else "converted"
    kv: dict[str, Any] = {
        "general.name": provenance.name,
        "general.description": f"{provenance.base_model_name} {adapted} by cpt_assets",
        "general.base_model.count": 1,
        "general.base_model.0.name": provenance.base_model_name,
    }
    if sampling is not None:
        kv |= {
            "general.sampling.temp": float(sampling.temperature),
            "general.sampling.top_p": float(sampling.top_p),
            "general.sampling.top_k": int(sampling.top_k),
            "general.sampling.penalty_repeat": float(sampling.repeat_penalty),
        }
    kv |= provenance.to_kv()
    kv |= {f"{PROVENANCE_NAMESPACE}.version.{tool}": v for tool, v in toolchain_versions().items()}
    kv[f"{PROVENANCE_NAMESPACE}.created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return kv


# Run with llama.cpp's own gguf-py on PYTHONPATH: its gguf_new_metadata.copy_with_new_metadata copies every KV pair
# and tensor of the converted file into a new one with our keys added (strings, floats and integers only).
_COPY_SCRIPT = """
import json, sys
import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
source, target, kv_file = sys.argv[1:4]
kinds = {str: gguf.GGUFValueType.STRING, float: gguf.GGUFValueType.FLOAT32, int: gguf.GGUFValueType.UINT32}
new = {key: MetadataDetails(kinds[type(value)], value) for key, value in json.load(open(kv_file)).items()}
reader = gguf.GGUFReader(source, "r")
arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
writer = gguf.GGUFWriter(target, arch=arch, endianess=reader.endianess)
copy_with_new_metadata(reader, writer, new, [])
"""


def add_metadata(source: Path, target: Path, kv: Mapping[str, Any], sources: LlamaCpp) -> None:
    """Copy a GGUF with `kv` added or replacing existing keys, using llama.cpp's gguf-py (not PyPI's gguf)."""
    kv_file = Path(target).with_suffix(".kv.json")
    kv_file.write_text(json.dumps(dict(kv)), encoding="utf-8")
    try:
        run_tool([sys.executable, "-c", _COPY_SCRIPT, source, target, kv_file], env=python_env(sources), timeout=600)
    finally:
        kv_file.unlink(missing_ok=True)


def convert_to_gguf(
    model_dir: Path,
    out_path: Path,
    provenance: Provenance | Mapping[str, Any],
    sampling: SamplingParams | None = None,
    sources: LlamaCpp | None = None,
) -> GGUFFile:
    """Convert a HF model folder to an F16 GGUF with llama.cpp's convert_hf_to_gguf.py, then add our provenance.

    The converter runs as a subprocess with the gguf-py of its own sources on PYTHONPATH (PyPI's gguf can lag behind
    the converter). Every architecture the converter supports converts; the vocabulary, pre-tokenizer and any
    weight permutation are llama.cpp's own.

    Raises:
        FileNotFoundError: config or weights missing.
        ValueError: an architecture the converter does not support (before anything is written).
        LlamaToolError: the converter failed (for example an unrecognised BPE pre-tokenizer); nothing is left at
            out_path.
    """
    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if not isinstance(provenance, Provenance):
        provenance = Provenance.from_mapping(provenance)
    sources = sources or llama_cpp_sources()
    check_convertible(model_dir, sources)
    kv = provenance_metadata(provenance, sampling)
    with atomic_path(out_path) as tmp:
        converted = tmp.with_name(tmp.name + ".converted")
        try:
            command = [sys.executable, sources.converter, model_dir, "--outtype", "f16", "--outfile", converted]
            run_tool(command, env=python_env(sources))
            add_metadata(converted, tmp, kv, sources)
        finally:
            converted.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    log.info("Converted %s to %s with llama.cpp %s in %.1fs", model_dir, out_path, sources.version, seconds)
    return describe_gguf(out_path, seconds)


# ---- quantization -------------------------------------------------------------------------------------------------
def quantize_gguf(
    f16_path: Path,
    out_path: Path,
    qtype: str,
    threads: int | None = None,
    imatrix: Path | None = None,
    sources: LlamaCpp | None = None,
) -> GGUFFile:
    """Quantize an F16 GGUF with llama.cpp's llama-quantize, with an importance matrix if given; KV metadata carries.

    Raises:
        ValueError: unknown type, a type that needs an imatrix without one, or an imatrix made for another model
            (all before anything is written).
        FileNotFoundError: the F16 file or the imatrix is missing.
        LlamaToolError: llama-quantize failed (nothing is left at out_path).
    """
    name = validate_quantization(qtype, imatrix=imatrix is not None)
    f16_path, out_path = Path(f16_path), Path(out_path)
    if not f16_path.exists():
        raise FileNotFoundError(f"F16 GGUF {f16_path} does not exist")
    sources = sources or llama_cpp_sources()
    command = [sources.tool("llama-quantize")]
    if imatrix is not None:
        check_imatrix(imatrix, f16_path)
        command += ["--imatrix", imatrix]
    started = time.perf_counter()
    with atomic_path(out_path) as tmp:
        run_tool([*command, f16_path, tmp, name, str(threads or os.cpu_count() or 1)])
    seconds = time.perf_counter() - started
    log.info("Quantized %s to %s%s in %.1fs", f16_path.name, name, " with imatrix" if imatrix else "", seconds)
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
    """What the gguf_model asset reports: files, their fidelity, the chosen type, the Modelfile and the provenance."""

    folder: Path
    files: tuple[GGUFFile, ...]  # F16 first, then the kept variant of each quantization
    fidelity: tuple[Fidelity, ...]  # vs the HF model: the F16 file and the Modelfile's file
    quant_fidelity: tuple[QuantFidelity, ...]  # vs the F16 file: every candidate, with and without the imatrix
    chosen_type: str  # the file type the Modelfile points at
    choice_reason: str
    imatrix: Imatrix | None
    modelfile: Path
    plot: Path | None  # size vs KLD PNG
    provenance: dict[str, Any]  # as read back from the F16 file
    hf_perplexity: float
    reference_seconds: float  # HF side of the verification

    def file(self, file_type: str) -> GGUFFile:
        return next(f for f in self.files if f.file_type == file_type.upper())

    def chosen_rows(self) -> list[QuantFidelity]:
        """The KLD rows of the file the Modelfile points at.

        None for F16 (the fallback when no candidate met the bounds): its fidelity is judged against the HF model.
        """
        name = self.file(self.chosen_type).path.name
        return [row for row in self.quant_fidelity if row.file == name]

    def table(self) -> list[dict[str, object]]:
        """Every file kept: size, bits per weight, time, hash, KLD vs F16 and whether it used the imatrix."""
        kept = {row.file: row for row in self.quant_fidelity}
        rows = []
        for gguf_file in self.files:
            row = kept.get(gguf_file.path.name)
            rows.append(
                {
                    "file": gguf_file.path.name,
                    "type": gguf_file.file_type,
                    "imatrix": row.imatrix if row else False,
                    "mb": round(gguf_file.bytes / 1e6, 2),
                    "bits_per_weight": round(gguf_file.bits_per_weight, 3),
                    "mean_kld": round(row.mean_kld, 6) if row else 0.0,
                    "same_top_pct": round(100 * row.same_top_share, 2) if row else 100.0,
                    "seconds": round(gguf_file.seconds, 2),
                    "sha256": gguf_file.sha256[:16],
                }
            )
        return rows

    def markdown(self) -> str:
        parts = [
            f"**Modelfile type: {self.chosen_type}**. {self.choice_reason}",
            "",
            "KL divergence from the F16 file (llama-perplexity), every candidate:",
            "",
            kld_markdown(self.quant_fidelity),
            "",
            "F16 and the chosen file against the merged HF model:",
            "",
            fidelity_markdown(self.fidelity),
        ]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Files, fidelity tables, choice, greedy completions side by side and provenance, JSON-ready."""
        return {
            "files": [asdict(f) | {"path": str(f.path)} for f in self.files],
            "table": self.table(),
            "kld": [asdict(row) for row in self.quant_fidelity],
            "chosen_type": self.chosen_type,
            "choice_reason": self.choice_reason,
            "imatrix": asdict(self.imatrix) | {"path": str(self.imatrix.path)} if self.imatrix else None,
            "hf_perplexity": self.hf_perplexity,
            "hf_fidelity": fidelity_table(self.fidelity),
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


VERIFICATION_FILE = GGUF_VERIFICATION  # beside the GGUF files (lake.py owns the name)


def gguf_file_name(stem: str, file_type: str) -> str:
    """The one place the GGUF file names are spelled: `<stem>-<TYPE>.gguf`."""
    return f"{stem}-{file_type.upper()}.gguf"


def _bounded_texts(texts: Sequence[str], max_chars: int) -> list[str]:
    """Leading texts up to about max_chars characters (the tools read whole chunks of what they get)."""
    kept, total = [], 0
    for text in texts:
        if text.strip() and total < max_chars:
            kept.append(text[: max_chars - total])
            total += len(kept[-1])
    return kept


def _token_count(model_dir: Path, texts: Sequence[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def _quantize_candidates(
    f16: GGUFFile,
    folder: Path,
    work: Path,
    stem: str,
    config: GGUFExportConfig,
    imatrix: Imatrix | None,
    base: Path,
    context: int,
    sources: LlamaCpp,
) -> tuple[list[GGUFFile], list[QuantFidelity]]:
    """Quantize each type without and (if any) with the imatrix, measure KLD, keep the better variant in `folder`."""
    kept, rows = [], []
    for qtype in config.quantizations:
        variants = [] if qtype in NEEDS_IMATRIX else [None]
        variants += [imatrix.path] if imatrix is not None else []
        measured = []
        for matrix in variants:
            tag = "imatrix" if matrix else "plain"
            candidate = quantize_gguf(f16.path, work / f"{tag}-{qtype}.gguf", qtype, config.threads, matrix, sources)
            row = kl_divergence(candidate, base, sources, context, matrix is not None, config.threads)
            measured.append((candidate, row))
        best_file, best_row = min(measured, key=lambda pair: pair[1].mean_kld)
        target = folder / gguf_file_name(stem, qtype)
        os.replace(best_file.path, target)
        kept.append(replace(best_file, path=target))
        rows += [replace(row, file=target.name) if row is best_row else row for _, row in measured]
        for candidate, _ in measured:
            candidate.path.unlink(missing_ok=True)
    return kept, rows


def export_gguf(
    model_dir: Path,
    out_dir: Path,
    provenance: Provenance | Mapping[str, Any],
    texts: Sequence[str],
    config: GGUFExportConfig | None = None,
    stem: str = "model",
    train_texts: Sequence[str] = (),
    sources: LlamaCpp | None = None,
    scored: ScoredBlocks | None = None,
) -> GGUFExport:
    """F16 GGUF by llama.cpp's converter, candidate quantizations measured by KLD, verification, Modelfile.

    Bad input (an architecture llama.cpp cannot convert, no usable text, no train text for the imatrix, tools not
    built; unknown types fail in GGUFExportConfig) raises before anything is written. The folder is built beside
    `out_dir` and swapped in only when every file is written, so a failed export leaves the previous one intact.
    Fidelity figures never fail the export: they are returned (and written to verification.json) for the checks.

    Args:
        model_dir: merged HF model folder.
        out_dir: folder for the GGUF files, the imatrix, the Modelfile, the plot and verification.json.
        provenance: what to record inside every GGUF.
        texts: held-out texts (test split): tokenization, perplexity against HF, KLD against F16.
        config: export settings; GGUFExportConfig() if None.
        stem: file name stem.
        train_texts: train-split texts for the domain importance matrix (needed when config.use_imatrix).
        sources: llama.cpp sources and tools; those of the installed llama-cpp-python if None.
        scored: the evaluation's scored test blocks (lake.read_scored_blocks); llama.cpp then scores those very
            blocks and the HF perplexity is the eval report's (block_size/max_blocks do not apply).
    """
    config = config or GGUFExportConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not isinstance(provenance, Provenance):
        provenance = Provenance.from_mapping(provenance)
    # Every input check runs before the (slow) HF reference and before anything is written.
    sources = sources or llama_cpp_sources()
    check_convertible(model_dir, sources)
    for tool in ("llama-quantize", "llama-perplexity", *(("llama-imatrix",) if config.use_imatrix else ())):
        sources.tool(tool)
    if not texts or not any(str(text).strip() for text in texts):
        raise ValueError("export_gguf needs at least one non-empty verification text")
    train = _bounded_texts(train_texts, 8 * config.imatrix_max_tokens)
    if config.use_imatrix and not train:
        raise ValueError("use_imatrix is on but no train-split text was given for the importance matrix")
    test = _bounded_texts(texts, 8 * config.kld_max_tokens)
    context, chunks = chunk_plan(_token_count(model_dir, test), config.kld_context, config.kld_max_tokens)

    reference = hf_reference(
        model_dir, texts, config.prompts, config.block_size, config.max_blocks, config.max_new_tokens, scored=scored
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        work = tmp / ".work"  # the F16 log-probabilities (hundreds of MB) and losing variants; removed below
        work.mkdir()
        f16 = convert_to_gguf(model_dir, tmp / gguf_file_name(stem, "F16"), provenance, config.sampling, sources)
        test_file = write_text(test, work / "test.txt")
        base = work / "f16.kld"
        f16_perplexity = kld_base(f16.path, test_file, base, sources, context, chunks, config.threads)
        if f16_perplexity is not None and not math.isfinite(f16_perplexity):
            # Before the imatrix: llama-imatrix exits on such weights too, but its message can be lost.
            raise ValueError(
                f"the F16 GGUF of {model_dir} gives non-finite log-probabilities on the test text (perplexity "
                f"{f16_perplexity}; the HF model's is {reference.perplexity:.4g}): its weights or activations "
                "overflow half precision, as a diverged training run's do (learning rate too high?)"
            )
        imatrix = None
        if config.use_imatrix:
            train_context, train_chunks = chunk_plan(
                _token_count(model_dir, train), config.kld_context, config.imatrix_max_tokens
            )
            imatrix = compute_imatrix(
                f16.path,
                write_text(train, work / "train.txt"),
                tmp / IMATRIX_FILE,
                sources,
                train_context,
                train_chunks,
                config.threads,
            )
        quantized, rows = _quantize_candidates(f16, tmp, work, stem, config, imatrix, base, context, sources)
        shutil.rmtree(work)
        files = [f16, *quantized]
        kept = [row for row in rows if any(row.file == f.path.name for f in quantized)]
        chosen, reason = choose_type(kept, config.max_mean_kld, config.max_p99_kld)
        if config.modelfile_type is not None:
            target_type, reason = config.modelfile_type, f"{config.modelfile_type} set by modelfile_type; {reason}"
        else:
            target_type = chosen.file_type if chosen else "F16"
            reason = reason if chosen else f"{reason}: the Modelfile points at F16"
        target = next(f for f in files if f.file_type == target_type)
        verified = [f16] if target is f16 else [f16, target]
        fidelity = [verify_gguf(f.path, reference=reference, n_threads=config.threads) for f in verified]
        write_modelfile(target.path, tmp / MODELFILE, config.context_length, params=config.sampling)
        plot = None
        if rows:
            (tmp / KLD_PLOT_FILE).write_bytes(size_kld_plot(rows, config.max_mean_kld))
            plot = out_dir / KLD_PLOT_FILE

        def moved(path: Path) -> Path:
            return out_dir / path.name

        result = GGUFExport(
            folder=out_dir,
            files=tuple(replace(f, path=moved(f.path)) for f in files),
            fidelity=tuple(replace(f, path=moved(f.path)) for f in fidelity),
            quant_fidelity=tuple(rows),
            chosen_type=target_type,
            choice_reason=reason,
            imatrix=replace(imatrix, path=moved(imatrix.path)) if imatrix else None,
            modelfile=out_dir / MODELFILE,
            plot=plot,
            provenance=read_provenance(f16.path),
            hf_perplexity=reference.perplexity,
            reference_seconds=reference.seconds,
        )
        # The verification travels with the files, so a copied folder still says how faithful each file is.
        (tmp / VERIFICATION_FILE).write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    return result
