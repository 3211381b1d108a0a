"""Merging a LoRA adapter into its base: exact weights, and refusal of an adapter made for another base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cpt_assets.lib.base_model import make_tiny_llama
from cpt_assets.lib.lake import sha256_file
from cpt_assets.lib.merge import (
    ModuleChange,
    adapter_mismatches,
    check_adapter_matches_base,
    merge_adapter,
    module_type,
    weight_changes,
)

LINEAR_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, targets: list[str], seed: int = 1) -> Path:
    """A LoRA adapter for `base_dir` with non-zero lora_B, so that merging changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "lora", LINEAR_TARGETS)


@pytest.fixture(scope="module")
def other_base_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny Llama with another hidden size: adapters made for it do not fit tiny_model_dir."""
    return make_tiny_llama(
        tmp_path_factory.mktemp("other") / "other-llama",
        tokenizer_dir=tokenizer_dir,
        hidden_size=32,
        intermediate_size=64,
    )


@pytest.fixture(scope="module")
def merged(tiny_model_dir, adapter_dir, tmp_path_factory):
    return merge_adapter(tiny_model_dir, adapter_dir, tmp_path_factory.mktemp("merged") / "merged")


def test_merge_equals_peft_merge_and_base_plus_delta(merged, tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved = load_file(str(merged.path / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    expected = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32), str(adapter_dir)
    ).merge_and_unload()
    for name, tensor in expected.state_dict().items():
        if name in saved:
            torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)

    # And by hand for one module: W + B @ A * alpha / r.
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"] * (8 / 4)
    key = "model.layers.1.self_attn.q_proj.weight"
    assert delta.abs().max() > 1e-4
    torch.testing.assert_close(saved[key], base[key] + delta, rtol=1e-6, atol=1e-6)
    # Untargeted weights stay bit-identical.
    torch.testing.assert_close(saved["model.norm.weight"], base["model.norm.weight"], rtol=0, atol=0)
    torch.testing.assert_close(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"], rtol=0, atol=0)


def test_merge_result_facts(merged, tiny_model_dir, adapter_dir):
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert merged.lora_modules == layers * len(LINEAR_TARGETS)
    assert merged.changed_tensors == layers * len(LINEAR_TARGETS)
    assert merged.max_abs_delta > 0
    assert merged.weights_sha256 == sha256_file(merged.path / "model.safetensors")
    assert merged.weights_bytes == (merged.path / "model.safetensors").stat().st_size
    assert merged.total_bytes > merged.weights_bytes
    assert merged.adapter_base_name == str(tiny_model_dir)
    assert merged.adapter_config_sha256 == sha256_file(adapter_dir / "adapter_config.json")
    assert not list(merged.path.glob("adapter_*")), "a merged folder must not carry adapter files"
    assert json.loads((merged.path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_merge_result_weight_change_figures(merged, tiny_model_dir, adapter_dir):
    """Per module type: every targeted linear weight changed nearly everywhere, everything else not at all."""
    from safetensors.torch import load_file

    base = load_file(str(tiny_model_dir / "model.safetensors"))
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    by_type = {c.module: c for c in merged.changes}
    assert set(by_type) == {*LINEAR_TARGETS, "embed_tokens", "input_layernorm", "post_attention_layernorm", "norm"}
    for target in LINEAR_TARGETS:
        change = by_type[target]
        assert change.tensors == change.changed_tensors == layers
        assert change.parameters == sum(
            base[f"model.layers.{i}.{'self_attn' if target[0] in 'qkvo' else 'mlp'}.{target}.weight"].numel()
            for i in range(layers)
        )
        assert change.changed_share > 0.999  # a dense B @ A changes (almost) every element
    for untouched in ("embed_tokens", "input_layernorm", "post_attention_layernorm", "norm"):
        assert by_type[untouched].changed_parameters == 0 and by_type[untouched].relative_change == 0
    # q_proj's relative change, by hand: ||sum of deltas|| / ||base weights|| over all layers.
    deltas, weights = 0.0, 0.0
    for i in range(layers):
        prefix = f"model.layers.{i}.self_attn.q_proj"
        delta = lora[f"base_model.model.{prefix}.lora_B.weight"] @ lora[f"base_model.model.{prefix}.lora_A.weight"] * 2
        deltas += float(delta.double().square().sum())
        weights += float(base[f"{prefix}.weight"].double().square().sum())
    assert by_type["q_proj"].relative_change == pytest.approx((deltas / weights) ** 0.5, rel=1e-4)
    # Totals agree with the rows; tied lm_head is counted once, as embed_tokens.
    assert merged.parameters == sum(t.numel() for t in base.values())
    assert merged.changed_parameters == sum(c.changed_parameters for c in merged.changes)
    linear = sum(by_type[t].parameters for t in LINEAR_TARGETS)
    assert merged.changed_share == pytest.approx(linear / merged.parameters, rel=1e-3)
    rows = merged.change_table()
    assert [row["module"] for row in rows] == sorted(by_type)
    assert next(r for r in rows if r["module"] == "norm")["changed_pct"] == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.3.self_attn.q_proj.weight", "q_proj"),
        ("model.layers.0.mlp.down_proj.bias", "down_proj"),
        ("model.embed_tokens.weight", "embed_tokens"),
        ("model.norm.weight", "norm"),
        ("lm_head.weight", "lm_head"),
    ],
)
def test_module_type(name, expected):
    assert module_type(name) == expected


def test_weight_changes_counts_elements():
    before = {"a.q_proj.weight": torch.zeros(2, 3), "b.q_proj.weight": torch.ones(2, 2), "norm.weight": torch.ones(4)}
    after = {
        "a.q_proj.weight": torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, -2.0]]),
        "b.q_proj.weight": torch.ones(2, 2),
        "norm.weight": torch.ones(4),
        "extra.weight": torch.ones(3),
    }
    changes = {c.module: c for c in weight_changes(before, after)}
    assert changes["q_proj"] == ModuleChange("q_proj", 2, 1, 10, 2, 2.0, (4.25**0.5) / 2.0)
    assert changes["q_proj"].changed_share == pytest.approx(0.2)
    assert changes["norm"] == ModuleChange("norm", 1, 0, 4, 0, 0.0, 0.0)
    assert changes["extra"].changed_parameters == 3  # a tensor the base lacked counts as wholly changed


# Moved from test_evaluation when weight change became the merge's figure alone (issue #8).
def test_zero_adapter_changes_nothing(tiny_model_dir, tmp_path):
    """An untrained adapter (peft's zero-initialised B) changes no weight."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(tmp_path / "z"))
    result = merge_adapter(tiny_model_dir, tmp_path / "z", tmp_path / "merged")
    assert result.changed_parameters == 0 and result.changed_tensors == 0
    assert all(change.relative_change == 0.0 for change in result.changes)


def test_trained_embedding_copy_counts_as_change(tiny_model_dir, tmp_path):
    """modules_to_save (how embed_tokens is trained in continued pretraining) is diffed like any other weight."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name:
                parameter[:10] += 1.0  # ten token rows trained
    peft_model.save_pretrained(str(tmp_path / "mts"))
    result = merge_adapter(tiny_model_dir, tmp_path / "mts", tmp_path / "merged")
    table = {change.module: change for change in result.changes}
    hidden = model.config.hidden_size
    assert table["embed_tokens"].changed_parameters == 10 * hidden
    assert table["q_proj"].changed_parameters == 0  # B still zero
    assert table["k_proj"].changed_parameters == 0


@pytest.mark.parametrize(
    ("merged", "changed", "relative_change"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], 0, 0.0),
        ([[1.5, 2.0], [3.0, 4.0]], 1, 0.5 / 30**0.5),
        ([[1.0, 2.0], [3.0, 4.0 + 1e-6]], 1, 1e-6 / 30**0.5),  # float64: any move of the merge is a change
        ([[0.0, 0.0], [0.0, 0.0]], 4, 1.0),
    ],
)
def test_weight_changes_table(merged, changed, relative_change):
    base = {"model.layers.0.self_attn.q_proj.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)}
    after = {"model.layers.0.self_attn.q_proj.weight": torch.tensor(merged, dtype=torch.float64)}
    (row,) = weight_changes(base, after)
    assert (row.module, row.parameters, row.changed_parameters) == ("q_proj", 4, changed)
    assert row.relative_change == pytest.approx(relative_change, rel=1e-6)


def test_merged_folder_keeps_the_tokenizer(merged, tokenizer):
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(merged.path))
    text = "The key words MUST and SHOULD NOT in RFC 2119."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (merged.path / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (merged.path / "tokenizer_config.json").read_text()
    )


def test_matching_adapter_has_no_mismatches(tiny_model_dir, adapter_dir):
    assert adapter_mismatches(tiny_model_dir, adapter_dir) == []


@pytest.mark.parametrize("targets", [["q_proj", "down_proj"], ["embed_tokens"]], ids=["linear", "embedding"])
def test_adapter_for_another_base_fails_before_writing(tiny_model_dir, other_base_dir, tmp_path, targets):
    foreign = make_adapter(other_base_dir, tmp_path / "foreign", targets)
    out_dir = tmp_path / "merged"
    out_dir.mkdir()
    (out_dir / "model.safetensors").write_bytes(b"previous good model")
    with pytest.raises(ValueError) as raised:
        merge_adapter(tiny_model_dir, foreign, out_dir)
    message = str(raised.value)
    assert str(other_base_dir) in message and str(tiny_model_dir) in message
    assert "do not fit" in message
    assert (out_dir / "model.safetensors").read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "merged"], "no temporary folder left behind"


def test_missing_adapter_config_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        check_adapter_matches_base(tiny_model_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        check_adapter_matches_base(tmp_path / "nowhere", tmp_path)


@pytest.mark.slow
def test_merge_on_the_real_base_model(tmp_path_factory, adapter_dir, tiny_model_dir):
    """SmolLM2-135M-Instruct with a LoRA on every projection: merge figures per module, and a tiny model's adapter
    refused with every mismatching tensor counted. About 45 seconds on 2 CPU cores."""
    from cpt_assets.lib.base_model import export_base_model

    base = export_base_model("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2") / "base")
    with pytest.raises(ValueError, match=r"made for base model .*tiny-llama.*28 tensor\(s\) do not fit"):
        check_adapter_matches_base(base.path, adapter_dir)

    adapter = make_adapter(base.path, tmp_path_factory.mktemp("real-adapter") / "lora", LINEAR_TARGETS)
    merged = merge_adapter(base.path, adapter, tmp_path_factory.mktemp("real-merged") / "merged")
    by_type = {c.module: c for c in merged.changes}
    assert merged.parameters == base.parameters
    assert merged.lora_modules == merged.changed_tensors == 30 * len(LINEAR_TARGETS)
    for target in LINEAR_TARGETS:
        assert by_type[target].changed_tensors == 30 and by_type[target].changed_share > 0.99
    assert by_type["embed_tokens"].changed_parameters == 0
    # Projections are about 79% of SmolLM2-135M's parameters; the tied 49152 x 576 embedding is most of the rest.
    assert 0.7 < merged.changed_share < 0.8
