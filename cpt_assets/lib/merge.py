"""Merge a LoRA adapter into its base model and save plain safetensors.

The GGUF writer and llama.cpp know nothing of adapters, so the adapter is folded into the base weights with peft's
`merge_and_unload` (W + B·A·alpha/r) and the result saved as an ordinary Hugging Face folder. Before anything is
loaded or written, the adapter's tensors are checked against the base checkpoint's shapes (read from the safetensors
headers, no model load): an adapter trained on another base model fails with a message naming both, instead of a
shape error deep inside peft or, worse, a merge that silently broadcasts.

The result carries how much the merge moved the weights, per module type (share of elements altered, largest and
relative change): an adapter whose embed_tokens or lm_head did not change was not trained there (unsloth #9326), and
an all-zero change means the adapter did nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt_assets.lib.lake import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, atomic_path, sha256_file

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = (ADAPTER_WEIGHTS_FILE,)
PEFT_PREFIX = "base_model.model."
# LoRA factor tensors: module path, factor kind. Linear layers save `.lora_A.weight`, embeddings `.lora_embedding_A`.
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$")


@dataclass(frozen=True, slots=True)
class ModuleChange:
    """How much the merge changed the weights of one module type (q_proj, embed_tokens, ...) over all layers."""

    module: str  # last component of the parameter name: "q_proj", "embed_tokens", "input_layernorm", ...
    tensors: int  # parameters of this type in the model
    changed_tensors: int  # of which the merge changed at least one value
    parameters: int  # elements over those tensors
    changed_parameters: int  # elements whose value changed
    max_abs_delta: float  # largest |merged - base|
    relative_change: float  # ||merged - base||_F / ||base||_F over all tensors of the type

    @property
    def changed_share(self) -> float:
        """Share of this type's parameters the merge altered."""
        return self.changed_parameters / self.parameters if self.parameters else 0.0


def module_type(parameter_name: str) -> str:
    """The module type a parameter belongs to: `model.layers.3.self_attn.q_proj.weight` -> `q_proj`."""
    parts = parameter_name.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) > 1:
        parts = parts[:-1]
    return parts[-1]


def weight_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[ModuleChange, ...]:
    """Per module type: tensors and elements the merge changed, largest and relative change (torch tensors in)."""
    import torch

    totals: dict[str, list[float]] = {}
    for name, new in after.items():
        old = before.get(name)
        new = new.detach().to(torch.float64)
        row = totals.setdefault(module_type(name), [0, 0, 0, 0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[2] += new.numel()
        if old is None or tuple(old.shape) != tuple(new.shape):
            # A tensor the base lacked (or reshaped): all of it counts as changed.
            row[1] += 1
            row[3] += new.numel()
            row[5] += float(new.square().sum())
            continue
        old = old.detach().to(torch.float64)
        delta = new - old
        changed = int((delta != 0).sum())
        if changed:
            row[1] += 1
            row[3] += changed
            row[4] = max(row[4], float(delta.abs().max()))
            row[5] += float(delta.square().sum())
        row[6] += float(old.square().sum())
    return tuple(
        ModuleChange(
            module=module,
            tensors=int(row[0]),
            changed_tensors=int(row[1]),
            parameters=int(row[2]),
            changed_parameters=int(row[3]),
            max_abs_delta=row[4],
            relative_change=(row[5] ** 0.5 / row[6] ** 0.5) if row[6] else 0.0,
        )
        for module, row in sorted(totals.items())
    )


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What the merged_model asset reports."""

    path: Path
    base_dir: Path
    adapter_dir: Path
    adapter_base_name: str  # base_model_name_or_path recorded in the adapter config
    adapter_config_sha256: str  # hash of adapter_config.json, carried into the GGUF's provenance
    lora_modules: int  # modules that carried LoRA factors
    changed_tensors: int  # base tensors whose values the merge changed (0 means the adapter did nothing)
    max_abs_delta: float  # largest |merged - base| over all weights
    parameters: int
    changed_parameters: int  # elements whose value the merge changed
    changes: tuple[ModuleChange, ...]  # the same per module type (q_proj, embed_tokens, ...), sorted by name
    weights_bytes: int
    total_bytes: int
    weights_sha256: str  # sha256 of model.safetensors (first shard if sharded)
    seconds: float

    @property
    def changed_share(self) -> float:
        """Share of the model's parameters the merge altered (LoRA on all linear layers: most of them)."""
        return self.changed_parameters / self.parameters if self.parameters else 0.0

    def change_table(self) -> list[dict[str, object]]:
        """One row per module type, for MetadataValue.table or markdown."""
        return [
            {
                "module": c.module,
                "tensors": c.tensors,
                "changed_tensors": c.changed_tensors,
                "parameters": c.parameters,
                "changed_pct": round(100 * c.changed_share, 3),
                "max_abs_delta": float(f"{c.max_abs_delta:.4g}"),
                "relative_change": float(f"{c.relative_change:.4g}"),
            }
            for c in self.changes
        ]


def _safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def _adapter_weights(adapter_dir: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (adapter_dir / name).exists():
            return adapter_dir / name
    raise FileNotFoundError(f"Adapter folder {adapter_dir} has no {' or '.join(ADAPTER_WEIGHTS)}")


def adapter_mismatches(base_dir: Path, adapter_dir: Path) -> list[str]:
    """Every way the adapter's tensors disagree with the base checkpoint's shapes; empty when they fit.

    Reads only safetensors headers and config files, so it is cheap enough to run before any load or write.
    """
    from safetensors import safe_open

    base_shapes = _safetensors_shapes(base_dir)
    config = json.loads((base_dir / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))

    def base_shape(module_weight: str) -> tuple[int, ...] | None:
        if module_weight in base_shapes:
            return base_shapes[module_weight]
        if tied and module_weight == "lm_head.weight":
            return base_shapes.get("model.embed_tokens.weight")
        return None

    problems: list[str] = []
    with safe_open(str(_adapter_weights(adapter_dir)), framework="pt") as handle:
        for key in handle.keys():
            shape = tuple(handle.get_slice(key).get_shape())
            name = key.removeprefix(PEFT_PREFIX)
            match = _LORA_KEY.match(name)
            if match:
                module, kind = match["module"], match["kind"]
                expected = base_shape(f"{module}.weight")
                if expected is None:
                    problems.append(f"{module}: adapter has LoRA factors for a module the base model lacks")
                    continue
                if kind.startswith("lora_embedding"):
                    # Embedding LoRA: A is (r, num_embeddings), B is (embedding_dim, r); base is (num, dim).
                    want = expected[0] if kind.endswith("A") else expected[1]
                    got = shape[1] if kind.endswith("A") else shape[0]
                else:
                    # Linear LoRA: A is (r, in_features), B is (out_features, r); base is (out, in).
                    want = expected[1] if kind.endswith("A") else expected[0]
                    got = shape[1] if kind.endswith("A") else shape[0]
                if want != got:
                    problems.append(f"{module}.{kind}: shape {list(shape)} does not fit base weight {list(expected)}")
                continue
            # Full copies: modules_to_save and the base layers peft saves beside embedding LoRA.
            full = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
            if not full.endswith((".weight", ".bias")):
                continue
            expected = base_shape(full)
            if expected is None:
                problems.append(f"{full}: adapter carries a tensor the base model lacks")
            elif expected != shape:
                problems.append(f"{full}: adapter shape {list(shape)} != base shape {list(expected)}")
    return problems


def check_adapter_matches_base(base_dir: Path, adapter_dir: Path) -> dict:
    """Raise ValueError naming both models if the adapter was made for another base; return the adapter config."""
    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    if not (base_dir / "config.json").exists():
        raise FileNotFoundError(f"Base model folder {base_dir} has no config.json")
    if not (adapter_dir / ADAPTER_CONFIG_FILE).exists():
        raise FileNotFoundError(f"Adapter folder {adapter_dir} has no {ADAPTER_CONFIG_FILE}")
    adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    adapter_base = str(adapter_config.get("base_model_name_or_path") or "?")
    problems = adapter_mismatches(base_dir, adapter_dir)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"Adapter {adapter_dir} was made for base model {adapter_base!r}, not for {base_dir}: "
            f"{len(problems)} tensor(s) do not fit ({shown})"
        )
    if adapter_base != "?" and Path(adapter_base).name != base_dir.name and adapter_base != str(base_dir):
        log.warning("Adapter names base %r, merging into %s (shapes fit)", adapter_base, base_dir)
    return adapter_config


def merge_adapter(base_model_dir: Path, adapter_dir: Path, out_dir: Path) -> MergeResult:
    """Fold a LoRA adapter into its base model and save the result as safetensors plus tokenizer.

    Args:
        base_model_dir: HF folder of the base model (config.json + safetensors).
        adapter_dir: peft adapter folder (adapter_config.json + adapter_model.safetensors), optionally a tokenizer.
        out_dir: target folder; replaced atomically, untouched if anything fails.

    Raises:
        FileNotFoundError: a folder or its config is missing.
        ValueError: the adapter does not fit the base model (checked before anything is loaded or written).
    """
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model_dir, adapter_dir, out_dir = Path(base_model_dir), Path(adapter_dir), Path(out_dir)
    adapter_config = check_adapter_matches_base(base_model_dir, adapter_dir)

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    # named_parameters skips the tied lm_head duplicate, so tied weights are counted once.
    before = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    lora_modules = sum(isinstance(module, LoraLayer) for module in peft_model.modules())
    merged = peft_model.merge_and_unload()
    merged.eval()
    with torch.no_grad():
        changes = weight_changes(before, dict(merged.named_parameters()))
    del before

    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base_model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    adapter_config_sha = hashlib.sha256((adapter_dir / ADAPTER_CONFIG_FILE).read_bytes()).hexdigest()
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "cpt_merge.json").write_text(
            json.dumps(
                {
                    "base_model_dir": str(base_model_dir),
                    "adapter_dir": str(adapter_dir),
                    "adapter_base_name": adapter_config.get("base_model_name_or_path"),
                    "adapter_config_sha256": adapter_config_sha,
                },
                indent=2,
            )
        )
    seconds = time.perf_counter() - started

    weights = sorted(out_dir.glob("*.safetensors"))
    result = MergeResult(
        path=out_dir,
        base_dir=base_model_dir,
        adapter_dir=adapter_dir,
        adapter_base_name=str(adapter_config.get("base_model_name_or_path") or ""),
        adapter_config_sha256=adapter_config_sha,
        lora_modules=lora_modules,
        changed_tensors=sum(c.changed_tensors for c in changes),
        max_abs_delta=max((c.max_abs_delta for c in changes), default=0.0),
        parameters=sum(c.parameters for c in changes),
        changed_parameters=sum(c.changed_parameters for c in changes),
        changes=changes,
        weights_bytes=sum(f.stat().st_size for f in weights),
        total_bytes=sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()),
        weights_sha256=sha256_file(weights[0]) if weights else "",
        seconds=seconds,
    )
    log.info(
        "Merged %s into %s: %d LoRA modules, %d tensors and %.1f%% of parameters changed",
        adapter_dir,
        out_dir,
        lora_modules,
        result.changed_tensors,
        100 * result.changed_share,
    )
    return result
