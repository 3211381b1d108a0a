"""GGUF export: F16 writer, llama.cpp quantization, verification against the HF model, provenance, Modelfile.

The model is a tiny Llama (hidden 256, so llama.cpp's K-quants apply instead of falling back) with the real SmolLM2
tokenizer. A random Llama initialised at std 0.02 predicts almost uniformly, so its perplexity cannot tell a right
conversion from a wrong one; its matrices are scaled by 3 so that predictions depend on attention (the
permutation-off control below then drifts by a few percent, far past the 1% bound).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import torch

from cpt_assets.lib import gguf_export
from cpt_assets.lib.base_model import make_tiny_llama, smollm2_gguf_path
from cpt_assets.lib.gguf_export import (
    GGUFExportConfig,
    Provenance,
    SamplingParams,
    export_gguf,
    gguf_file_name,
    permute_qk,
    quantization_types,
    quantize_gguf,
    read_provenance,
    validate_quantization,
    write_f16_gguf,
    write_modelfile,
)
from cpt_assets.lib.gguf_verify import (
    MIN_BLOCK_TOKENS,
    Completion,
    Fidelity,
    fidelity_markdown,
    fidelity_table,
    gguf_loads,
    gguf_metadata,
    hf_reference,
    perplexity_within,
    tokenization_matches,
    verify_gguf,
)
from cpt_assets.lib.lake import sha256_file
from cpt_assets.lib.scoring import pack

PROVENANCE = Provenance(
    name="cpt-tiny-test",
    base_model_name="tiny-llama",
    base_model_sha256="a" * 64,
    adapter_name="lora-r16",
    adapter_config_sha256="b" * 64,
    training_config_sha256="c" * 64,
    merged_model_sha256="d" * 64,
    split_sha256={"train": "1" * 64, "validation": "2" * 64, "test": "3" * 64},
    run_id="run-42",
)
PROMPTS = ("The key words MUST and SHOULD", "<|im_start|>user\nWhat is RFC 2119?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def rfc_texts(corpus_dir) -> list[str]:
    import pymupdf

    with pymupdf.open(corpus_dir / "ietf" / "rfc2119.txt.pdf") as document:
        return [document[0].get_text(), document[1].get_text()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from safetensors.torch import load_file, save_file

    folder = make_tiny_llama(
        tmp_path_factory.mktemp("gguf") / "tiny-llama-256",
        tokenizer_dir=tokenizer_dir,
        hidden_size=256,
        intermediate_size=512,
        heads=4,
        kv_heads=2,
    )
    weights = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: (v * 3 if v.ndim == 2 else v).contiguous() for k, v in weights.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return folder


@pytest.fixture(scope="module")
def config() -> GGUFExportConfig:
    return GGUFExportConfig(
        quantizations=("Q8_0", "Q4_K_M"),
        block_size=128,
        max_blocks=4,
        max_new_tokens=8,
        prompts=PROMPTS,
        modelfile_type="Q4_K_M",
    )


@pytest.fixture(scope="module")
def export(model_dir, rfc_texts, config, tmp_path_factory):
    return export_gguf(model_dir, tmp_path_factory.mktemp("export") / "gguf", PROVENANCE, rfc_texts, config)


@pytest.fixture(scope="module")
def reference(model_dir, rfc_texts, config):
    return hf_reference(model_dir, rfc_texts, PROMPTS, config.block_size, config.max_blocks, config.max_new_tokens)


# ---- the export end to end ---------------------------------------------------------------------------------------
def test_export_writes_f16_quantizations_and_modelfile(export):
    names = sorted(p.name for p in export.folder.iterdir())
    assert names == ["Modelfile", "model-F16.gguf", "model-Q4_K_M.gguf", "model-Q8_0.gguf", "verification.json"]
    assert [f.file_type for f in export.files] == ["F16", "Q8_0", "Q4_K_M"]
    for gguf_file in export.files:
        assert gguf_file.path.parent == export.folder
        assert gguf_file.bytes == gguf_file.path.stat().st_size
        assert gguf_file.sha256 == sha256_file(gguf_file.path)
        assert gguf_file.bits_per_weight == pytest.approx(gguf_file.bytes * 8 / gguf_file.parameters)
    f16, q8, q4 = export.files
    assert f16.parameters == q8.parameters == q4.parameters
    assert f16.bits_per_weight > q8.bits_per_weight > q4.bits_per_weight
    # With 256-wide rows llama.cpp uses real K-quants rather than its fallbacks.
    assert f16.tensor_types == {"F16": 15, "F32": 5}
    assert set(q8.tensor_types) == {"Q8_0", "F32"}
    assert "Q4_K" in q4.tensor_types and "Q5_0" not in q4.tensor_types


def test_f16_gguf_matches_hf_model(export, rfc_texts):
    f16 = export.fidelity[0]
    assert gguf_loads(f16)[0]
    passed, description = tokenization_matches(f16)
    assert passed, description
    assert f16.tokens_compared > 500 and f16.texts == len(rfc_texts)
    passed, description = perplexity_within(f16, 0.01)
    assert passed, description
    # The texts are packed as documents (separator after each), 128-token blocks, at most 4, a 16-token tail.
    stream = [0] * (f16.tokens_compared + f16.texts)
    blocks = pack(stream, 128, keep_tail=True, min_tail=MIN_BLOCK_TOKENS, max_blocks=4)
    assert f16.scored_tokens == sum(len(b) - 1 for b in blocks)
    assert f16.hf_perplexity == pytest.approx(export.hf_perplexity)
    assert f16.mean_abs_nll_diff < 0.01  # F16 rounding only
    assert len(f16.completions) == len(PROMPTS)


def test_quantized_files_load_and_report_perplexity(export, config):
    for fidelity in export.fidelity[1:]:
        assert fidelity.loaded, fidelity.error
        assert fidelity.tokenization_equal, fidelity.first_mismatch
        assert math.isfinite(fidelity.gguf_perplexity) and fidelity.gguf_perplexity > 1
        passed, description = perplexity_within(fidelity, config.tolerance_for(fidelity.file_type))
        assert passed and "reported" in description
    q8, q4 = export.fidelity[1:]
    assert q8.mean_abs_nll_diff < q4.mean_abs_nll_diff  # 8 bits stay closer to the HF model than 4


def test_fidelity_table_and_markdown(export):
    rows = export.table()
    assert [row["type"] for row in rows] == ["F16", "Q8_0", "Q4_K_M"]
    assert rows[0]["tokenization"] == "equal" and rows[0]["loads"] is True
    assert abs(rows[0]["drift_pct"]) < 1
    assert rows[2]["mb"] < rows[0]["mb"]
    markdown = export.markdown()
    assert "| file | type |" in markdown and "model-Q4_K_M.gguf" in markdown
    assert markdown.count("**Greedy completions") == 3


def test_verification_file_keeps_table_and_completions(export):
    import json

    stored = json.loads((export.folder / "verification.json").read_text())
    assert stored["table"] == json.loads(json.dumps(export.table()))
    assert stored["hf_perplexity"] == pytest.approx(export.hf_perplexity)
    assert [row["prompt"] for row in stored["completions"]] == list(PROMPTS)
    for index, row in enumerate(stored["completions"]):
        assert set(row) == {"prompt", "HF", "F16", "Q8_0", "Q4_K_M"}
        assert row["HF"] == export.fidelity[0].completions[index].hf
        assert row["Q4_K_M"] == export.fidelity[2].completions[index].gguf
    assert stored["provenance"]["cpt.run_id"] == "run-42"
    assert [f["sha256"] for f in stored["files"]] == [f.sha256 for f in export.files]


def test_provenance_round_trip(export):
    for gguf_file in export.files:
        found = read_provenance(gguf_file.path)
        assert found["general.name"] == "cpt-tiny-test"
        assert found["general.base_model.0.name"] == "tiny-llama"
        assert found["cpt.base_model.sha256"] == "a" * 64
        assert found["cpt.adapter.name"] == "lora-r16"
        assert found["cpt.adapter.config_sha256"] == "b" * 64
        assert found["cpt.training.config_sha256"] == "c" * 64
        assert found["cpt.merged_model.sha256"] == "d" * 64
        assert found["cpt.split.test.sha256"] == "3" * 64
        assert found["cpt.run_id"] == "run-42"
        assert found["cpt.version.llama_cpp_python"] and found["cpt.version.gguf"]
        assert found["cpt.version.llama_cpp"]  # the llama.cpp build llama-cpp-python vendors
        datetime.fromisoformat(found["cpt.created_at"])
    assert export.provenance == read_provenance(export.files[0].path)


def test_tokenizer_metadata_matches_the_official_smollm2_gguf(export):
    """Our writer's tokenizer keys equal those llama.cpp's converter wrote into the packaged SmolLM2 GGUF."""
    ours = gguf_metadata(export.files[0].path)
    official = gguf_metadata(smollm2_gguf_path())
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "llama.vocab_size",
        "llama.rope.freq_base",
    ):
        assert ours[key] == official[key], key
    assert ours["tokenizer.ggml.pre"] == "smollm"


def test_merged_adapter_round_trip(model_dir, rfc_texts, tmp_path):
    """merge_adapter's folder converts as it is: F16 within 1% of the merged HF model, provenance from the merge."""
    from cpt_assets.lib.merge import merge_adapter
    from cpt_assets_tests.lib.test_merge import LINEAR_TARGETS, make_adapter

    adapter = make_adapter(model_dir, tmp_path / "adapter", LINEAR_TARGETS)
    merged = merge_adapter(model_dir, adapter, tmp_path / "merged")
    provenance = Provenance(
        name="cpt-tiny-merged",
        base_model_name="tiny-llama-256",
        adapter_name=adapter.name,
        adapter_config_sha256=merged.adapter_config_sha256,
        merged_model_sha256=merged.weights_sha256,
    )
    config = GGUFExportConfig(quantizations=("Q8_0",), block_size=128, max_blocks=2, max_new_tokens=4, prompts=())
    export = export_gguf(merged.path, tmp_path / "gguf", provenance, rfc_texts, config)
    f16 = export.fidelity[0]
    assert tokenization_matches(f16)[0], f16.first_mismatch
    assert perplexity_within(f16, 0.01)[0], perplexity_within(f16, 0.01)[1]
    # The merged model is not the base: the HF reference perplexity moved.
    base = hf_reference(model_dir, rfc_texts, (), 128, 2, 4)
    assert abs(export.hf_perplexity / base.perplexity - 1) > 0.01
    found = read_provenance(export.files[1].path)
    assert found["cpt.adapter.config_sha256"] == sha256_file(adapter / "adapter_config.json")
    assert found["cpt.merged_model.sha256"] == sha256_file(merged.path / "model.safetensors")
    assert found["general.description"] == "tiny-llama-256 continually pretrained with LoRA by cpt_assets"


def test_modelfile(export):
    text = export.modelfile.read_text()
    lines = text.splitlines()
    assert "FROM ./model-Q4_K_M.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert "PARAMETER num_ctx 2048" in lines
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER top_p 0.9" in lines
    assert "PARAMETER repeat_penalty 1.1" in lines
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}" in text and "<|im_start|>assistant" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines


def test_modelfile_without_chatml_has_no_template(tmp_path):
    gguf_path = tmp_path / "m.gguf"
    out = write_modelfile(
        gguf_path, tmp_path / "Modelfile", 512, stop_tokens=("</s>",), params=SamplingParams(0.2), chat_template=""
    )
    assert out.read_text().splitlines()[2:] == [
        "FROM ./m.gguf",
        'PARAMETER stop "</s>"',
        "PARAMETER num_ctx 512",
        "PARAMETER temperature 0.2",
        "PARAMETER top_p 0.9",
        "PARAMETER top_k 40",
        "PARAMETER repeat_penalty 1.1",
    ]


# ---- checks that can fail ---------------------------------------------------------------------------------------
def test_broken_conversion_fails_the_checks(model_dir, reference, tmp_path, monkeypatch):
    """Without the q/k permutation and with llama.cpp's "default" pre-tokenizer, the GGUF loads but both checks go red.

    (GPT-2's and StarCoder's pre-tokenizers happen to split this RFC text exactly as SmolLM's does.)
    """
    monkeypatch.setattr(gguf_export, "permute_qk", lambda weights, n_head, n_head_kv=None: weights)
    hashes = {digest: "default" for digest in gguf_export.KNOWN_PRE_TOKENIZERS}
    monkeypatch.setattr(gguf_export, "KNOWN_PRE_TOKENIZERS", hashes)
    broken = write_f16_gguf(model_dir, tmp_path / "broken.gguf", PROVENANCE)
    fidelity = verify_gguf(broken.path, reference=reference)
    assert gguf_loads(fidelity)[0]
    passed, description = tokenization_matches(fidelity)
    assert not passed and "token" in description and "HF" in description
    passed, description = perplexity_within(fidelity, 0.01)
    assert not passed and "exceeded" in description


def test_unloadable_file_is_reported_not_raised(reference, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF but not really" * 100)
    fidelity = verify_gguf(garbage, reference=reference)
    assert not fidelity.loaded and fidelity.error
    for check in (gguf_loads, tokenization_matches, lambda f: perplexity_within(f, 0.01)):
        passed, description = check(fidelity)
        assert not passed and "garbage.gguf" in description
    assert fidelity_table([fidelity])[0]["gguf_ppl"] is None


# ---- bad input fails before writing ------------------------------------------------------------------------------
def test_unknown_quantization_type_fails_before_writing(export, tmp_path):
    good = tmp_path / "model-Q4_K_M.gguf"
    shutil.copy(export.files[2].path, good)
    before = sha256_file(good)
    with pytest.raises(ValueError) as raised:
        quantize_gguf(export.files[0].path, good, "Q4_K_X")
    assert "'Q4_K_X'" in str(raised.value) and "Q4_K_M" in str(raised.value) and "Q8_0" in str(raised.value)
    assert sha256_file(good) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-Q4_K_M.gguf"]
    with pytest.raises(ValueError, match="Q9_9"):
        GGUFExportConfig(quantizations=("Q8_0", "Q9_9"))


def test_failed_quantization_leaves_the_previous_file(tmp_path):
    """llama.cpp itself fails (input is no GGUF): the good file stays byte-identical, no temporary file remains."""
    not_gguf = tmp_path / "in.gguf"
    not_gguf.write_bytes(b"\0" * 4096)
    good = tmp_path / "out.gguf"
    good.write_bytes(b"previous good gguf")
    with pytest.raises(RuntimeError, match="Q8_0"):
        quantize_gguf(not_gguf, good, "q8_0")
    assert good.read_bytes() == b"previous good gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "out.gguf"]


def test_unsupported_architecture_fails_before_writing(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer))).save_pretrained(gpt2_dir)
    tokenizer.save_pretrained(gpt2_dir)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous good gguf")
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        write_f16_gguf(gpt2_dir, out, PROVENANCE)
    assert out.read_bytes() == b"previous good gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "out.gguf"]
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        export_gguf(gpt2_dir, tmp_path / "export", PROVENANCE, ["some text"])
    assert not (tmp_path / "export").exists()


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


@pytest.fixture()
def previous_export(export, tmp_path) -> Path:
    """A copy of a good export in a fresh folder, so that failing exports into it do not disturb other tests."""
    out_dir = tmp_path / "gguf"
    shutil.copytree(export.folder, out_dir)
    return out_dir


def _with_foreign_pre_tokenizer(model_dir: Path, folder: Path) -> Path:
    """The model with a byte-level pre-tokenizer that adds a prefix space: a probe hash llama.cpp does not know."""
    import json

    shutil.copytree(model_dir, folder)
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"] = {
        "type": "ByteLevel",
        "add_prefix_space": True,
        "trim_offsets": True,
        "use_regex": True,
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return folder


def test_failed_export_leaves_the_previous_export_intact(previous_export, model_dir, rfc_texts, config, tmp_path):
    """Bad input into a folder holding a good export: fails naming the problem; old files byte-identical."""
    before = _tree(previous_export)
    foreign = _with_foreign_pre_tokenizer(model_dir, tmp_path / "foreign-tokenizer")
    with pytest.raises(ValueError, match="pre-tokenizer"):
        export_gguf(foreign, previous_export, PROVENANCE, rfc_texts, config)
    with pytest.raises(ValueError, match="verification text"):
        export_gguf(model_dir, previous_export, PROVENANCE, ["", "  "], config)
    with pytest.raises(ValueError, match="Q4_K_X"):
        export_gguf(model_dir, previous_export, PROVENANCE, rfc_texts, GGUFExportConfig(quantizations=("Q4_K_X",)))
    assert _tree(previous_export) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign-tokenizer", "gguf"], "nothing written beside it"


def test_export_failing_midway_leaves_the_previous_export_intact(
    previous_export, model_dir, rfc_texts, config, tmp_path, monkeypatch
):
    """The second quantization dies after writing part of its file (as a full disk would): the F16 and first
    quantization already written for the new export are discarded, the previous export stays byte-identical."""
    before = _tree(previous_export)
    real_quantize = gguf_export.quantize_gguf
    calls = []

    def quantize_then_fail(f16_path, out_path, qtype, threads=None):
        calls.append(qtype)
        if len(calls) == 1:
            return real_quantize(f16_path, out_path, qtype, threads)
        Path(out_path).write_bytes(b"GGUF partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_export, "quantize_gguf", quantize_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_gguf(model_dir, previous_export, PROVENANCE, rfc_texts, config)
    assert calls == ["Q8_0", "Q4_K_M"]
    assert _tree(previous_export) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf"], "no temporary folder left behind"


def test_foreign_pre_tokenizer_is_refused_before_writing(model_dir, tmp_path):
    foreign = _with_foreign_pre_tokenizer(model_dir, tmp_path / "foreign")
    with pytest.raises(ValueError, match="Unrecognised BPE pre-tokenizer"):
        write_f16_gguf(foreign, tmp_path / "out.gguf", PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]


def test_weights_that_disagree_with_the_config_are_refused(model_dir, tmp_path):
    import json

    folder = tmp_path / "wrong-heads"
    shutil.copytree(model_dir, folder)
    config_json = json.loads((folder / "config.json").read_text())
    config_json["num_attention_heads"] = 8  # the weights hold 4 query heads of 64 rows
    config_json["head_dim"] = 64
    (folder / "config.json").write_text(json.dumps(config_json))
    with pytest.raises(ValueError, match="q_proj.weight: 256 rows, config says 8 heads x 64"):
        write_f16_gguf(folder, tmp_path / "out.gguf", PROVENANCE)
    assert not (tmp_path / "out.gguf").exists()


# ---- pure functions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [("Q4_K_M", "Q4_K_M"), ("q8_0", "Q8_0"), (" Q5_K_S ", "Q5_K_S"), ("BF16", "BF16"), ("IQ4_XS", "IQ4_XS")],
)
def test_validate_quantization_accepts(given, expected):
    assert validate_quantization(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [("Q4_K_X", "Unknown"), ("F16", "Unknown"), ("F32", "Unknown"), ("", "Unknown"), ("IQ2_XS", "importance matrix")],
)
def test_validate_quantization_rejects(given, message):
    with pytest.raises(ValueError, match=message):
        validate_quantization(given)


def test_quantization_types_cover_the_common_ones():
    assert {"Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "BF16"} <= set(quantization_types())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantizations": ("Q8_0", "q8_0")}, "twice"),
        ({"f16_perplexity_tolerance": 0}, "f16_perplexity_tolerance"),
        ({"quantized_perplexity_tolerance": -0.1}, "quantized_perplexity_tolerance"),
        ({"context_length": 8}, "context_length"),
        ({"block_size": 4}, "block_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"modelfile_type": "Q6_K"}, "modelfile_type"),
    ],
)
def test_export_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GGUFExportConfig(**kwargs)


def test_export_config_defaults():
    config = GGUFExportConfig(quantizations="q4_k_m", modelfile_type="f16")
    assert config.quantizations == ("Q4_K_M",) and config.modelfile_type == "F16"
    assert config.tolerance_for("F16") == 0.01 and config.tolerance_for("Q4_K_M") is None
    assert GGUFExportConfig().quantizations == ("Q4_K_M",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": "x", "base_model_name": "b", "colour": "red"}, "colour"),
        ({"name": " ", "base_model_name": "b"}, "name"),
        ({"name": "x", "base_model_name": ""}, "base_model_name"),
        ({"name": "x", "base_model_name": "b", "split_sha256": {"Train Set": "1"}}, "Train Set"),
    ],
)
def test_provenance_validation(values, message):
    with pytest.raises(ValueError, match=message):
        Provenance.from_mapping(values)


def test_provenance_kv_skips_empty_values():
    kv = Provenance(name="n", base_model_name="b", split_sha256={"train": "t"}, extra={"corpus": "ietf"}).to_kv()
    assert kv == {"cpt.base_model.name": "b", "cpt.split.train.sha256": "t", "cpt.corpus": "ietf"}


@pytest.mark.parametrize(
    ("rows", "n_head", "n_head_kv", "expected"),
    [
        ([0, 1, 2, 3], 1, None, [0, 2, 1, 3]),  # one head of 4: halves (0,1|2,3) become pairs (0,2),(1,3)
        ([0, 1, 2, 3, 4, 5, 6, 7], 2, None, [0, 2, 1, 3, 4, 6, 5, 7]),  # per head
        ([0, 1, 2, 3, 4, 5], 1, None, [0, 3, 1, 4, 2, 5]),  # head dim 6
        ([0, 1, 2, 3], 4, 1, [0, 2, 1, 3]),  # k_proj with one KV head: permuted by KV heads
    ],
)
def test_permute_qk(rows, n_head, n_head_kv, expected):
    weights = torch.tensor(rows, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    assert permute_qk(weights, n_head, n_head_kv)[:, 0].tolist() == expected


# test_make_blocks moved to test_scoring.test_capped_blocks (the packer is the scoring core's).


def _fidelity(**changes) -> Fidelity:
    base = Fidelity(
        path=Path("m-F16.gguf"),
        file_type="F16",
        loaded=True,
        error="",
        texts=1,
        tokens_compared=100,
        tokenization_equal=True,
        first_mismatch="",
        blocks=1,
        scored_tokens=99,
        hf_perplexity=100.0,
        gguf_perplexity=100.5,
        relative_drift=0.005,
        mean_abs_nll_diff=0.001,
        completions=(Completion("p", "a b", "a b"), Completion("q", "x", "y")),
        seconds=1.0,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("drift", "tolerance", "passed", "word"),
    [
        (0.005, 0.01, True, "met"),
        (-0.009, 0.01, True, "met"),
        (0.0101, 0.01, False, "exceeded"),
        (-0.02, 0.01, False, "exceeded"),
        (0.08, None, True, "reported"),
        (float("nan"), 0.01, False, "not finite"),
    ],
)
def test_perplexity_within(drift, tolerance, passed, word):
    result, description = perplexity_within(_fidelity(relative_drift=drift), tolerance)
    assert result is passed and word in description


def test_tokenization_check_names_the_mismatch():
    passed, description = tokenization_matches(_fidelity(tokenization_equal=False, first_mismatch="text 0, token 3"))
    assert not passed and "text 0, token 3" in description
    assert tokenization_matches(_fidelity())[0]


def test_fidelity_table_row():
    fidelity = _fidelity()
    assert fidelity.identical_completions == 1
    assert fidelity_table([fidelity]) == [
        {
            "file": "m-F16.gguf",
            "type": "F16",
            "loads": True,
            "tokenization": "equal",
            "hf_ppl": 100.0,
            "gguf_ppl": 100.5,
            "drift_pct": 0.5,
            "mean_abs_nll_diff": 0.001,
            "same_completions": "1/2",
        }
    ]
    assert "| p | a b | a b |" in fidelity_markdown([fidelity])


def test_gguf_file_name():
    assert gguf_file_name("model", "q4_k_m") == "model-Q4_K_M.gguf"


# ---- the real model ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_round_trip(rfc_texts, tmp_path_factory):
    """The real SmolLM2-135M-Instruct (from the packaged GGUF, as safetensors) -> F16 GGUF -> Q8_0 and Q4_K_M.

    Proves on the real model what the tiny one cannot: llama.cpp tokenizes real RFC text exactly as HF, the F16
    file's perplexity is within 1% of the HF model's, and the quantized files stay within a few percent.
    About a minute and a half on 2 CPU cores.
    """
    from cpt_assets.lib.base_model import export_base_model

    base = export_base_model("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2") / "base")
    provenance = Provenance(name="smollm2-135m-roundtrip", base_model_name="smollm2-135m-instruct")
    config = GGUFExportConfig(quantizations=("Q8_0", "Q4_K_M"), max_blocks=4)
    export = export_gguf(base.path, tmp_path_factory.mktemp("smollm2-gguf") / "gguf", provenance, rfc_texts, config)
    f16, q8, q4 = export.fidelity
    for fidelity in export.fidelity:
        assert fidelity.loaded and fidelity.tokenization_equal, fidelity.first_mismatch or fidelity.error
    assert perplexity_within(f16, 0.01)[0], perplexity_within(f16, 0.01)[1]
    assert abs(q8.relative_drift) < 0.02
    assert abs(q4.relative_drift) < 0.15
    assert 5 < export.hf_perplexity < 100  # a trained model on English standards text, not a random one
    assert f16.identical_completions >= 2
    assert export.files[2].bits_per_weight < 7
