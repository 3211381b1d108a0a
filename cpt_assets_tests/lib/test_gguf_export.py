"""GGUF export through llama.cpp's own tools: converter, quantizer, importance matrix, KL divergence, Modelfile.

The model is a tiny Llama (hidden 256, so llama.cpp's K-quants apply instead of falling back) with the real SmolLM2
tokenizer; its matrices are scaled by 3 so that predictions depend on attention rather than being near uniform.
A second architecture (a tiny Qwen2 with the same tokenizer) proves that conversion is no longer Llama-only.
Everything runs the real llama.cpp: convert_hf_to_gguf.py from the llama-cpp-python sdist and the tools built from
it (scripts/setup.sh builds them once; `python -m cpt_assets.lib.llama_tools`).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from cpt_assets.lib.base_model import make_tiny_llama, smollm2_gguf_path
from cpt_assets.lib.gguf_export import (
    GGUFExportConfig,
    Provenance,
    SamplingParams,
    check_convertible,
    convert_to_gguf,
    export_gguf,
    gguf_file_name,
    quantization_types,
    quantize_gguf,
    read_provenance,
    validate_quantization,
    write_modelfile,
)
from cpt_assets.lib.gguf_fidelity import (
    QuantFidelity,
    check_imatrix,
    choose_type,
    chunk_plan,
    kld_within,
    parse_kld_output,
    write_text,
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
from cpt_assets.lib.llama_tools import LlamaCpp, LlamaToolError, build_tools, llama_cpp_sources, unpack
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
def sources() -> LlamaCpp:
    """llama.cpp of the installed llama-cpp-python, tools built (cached: a no-op after scripts/setup.sh)."""
    found = llama_cpp_sources()
    build_tools(found)
    return found


def _pages(corpus_dir: Path, name: str, pages: range) -> list[str]:
    import pymupdf

    with pymupdf.open(corpus_dir / name) as document:
        return [document[i].get_text() for i in pages]


@pytest.fixture(scope="module")
def rfc_texts(corpus_dir) -> list[str]:
    return _pages(corpus_dir, "ietf/rfc2119.txt.pdf", range(2))


@pytest.fixture(scope="module")
def train_texts(corpus_dir) -> list[str]:
    return _pages(corpus_dir, "ietf/rfc6749.txt.pdf", range(10, 14))


def _scaled(folder: Path, factor: float = 3, names: tuple[str, ...] = ()) -> Path:
    """Multiply the matrices (those whose name contains one of `names`, when given) by `factor`, in place."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    chosen = {k for k, v in weights.items() if v.ndim == 2 and (not names or any(n in k for n in names))}
    save_file(
        {k: (v * factor if k in chosen else v).contiguous() for k, v in weights.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    folder = make_tiny_llama(
        tmp_path_factory.mktemp("gguf") / "tiny-llama-256",
        tokenizer_dir=tokenizer_dir,
        hidden_size=256,
        intermediate_size=512,
        heads=4,
        kv_heads=2,
    )
    return _scaled(folder)


@pytest.fixture(scope="module")
def olmo2_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny OLMo-2 (QK-norm, norms after attention and MLP: another family) with the real SmolLM2 tokenizer.

    (A tiny Qwen2 would not do: transformers maps model_type qwen2 to Qwen2Tokenizer, which replaces SmolLM2's
    pre-tokenizer, so neither HF nor the converter would see the SmolLM2 tokenizer.)
    """
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    config = Olmo2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id or 0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("olmo2") / "tiny-olmo2"
    Olmo2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return _scaled(folder)


@pytest.fixture(scope="module")
def config() -> GGUFExportConfig:
    return GGUFExportConfig(
        quantizations=("Q8_0", "Q4_K_M"),
        block_size=128,
        max_blocks=4,
        max_new_tokens=8,
        prompts=PROMPTS,
        kld_context=256,
        kld_max_tokens=1024,
        imatrix_max_tokens=1024,
    )


@pytest.fixture(scope="module")
def export(model_dir, rfc_texts, train_texts, config, tmp_path_factory, sources):
    out = tmp_path_factory.mktemp("export") / "gguf"
    return export_gguf(model_dir, out, PROVENANCE, rfc_texts, config, train_texts=train_texts, sources=sources)


@pytest.fixture(scope="module")
def reference(model_dir, rfc_texts, config):
    return hf_reference(model_dir, rfc_texts, PROMPTS, config.block_size, config.max_blocks, config.max_new_tokens)


# ---- the converter alone (default suite, no built tool needed) ---------------------------------------------------
def test_converter_writes_llama_with_provenance(model_dir, reference, tmp_path):
    """llama.cpp's convert_hf_to_gguf.py on the tiny Llama: loads, tokenizes as HF, F16 within 1%, our keys inside."""
    f16 = convert_to_gguf(model_dir, tmp_path / "m.gguf", PROVENANCE, SamplingParams())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"], "no temporary file left"
    assert f16.file_type == "F16" and f16.tensor_types == {"F16": 15, "F32": 5}
    fidelity = verify_gguf(f16.path, reference=reference)
    assert tokenization_matches(fidelity)[0], fidelity.first_mismatch
    assert perplexity_within(fidelity, 0.01)[0], perplexity_within(fidelity, 0.01)[1]
    found = read_provenance(f16.path)
    assert found["general.name"] == "cpt-tiny-test" and found["cpt.run_id"] == "run-42"
    assert found["cpt.split.test.sha256"] == "3" * 64 and found["general.base_model.0.name"] == "tiny-llama"
    assert gguf_metadata(f16.path)["general.sampling.top_k"] == "40"


def test_second_architecture_olmo2(olmo2_dir, rfc_texts, tmp_path):
    """An OLMo-2 model converts and loads in llama.cpp with exactly HF's tokens and perplexity (the old writer refused
    every architecture but Llama)."""
    f16 = convert_to_gguf(olmo2_dir, tmp_path / "olmo2.gguf", PROVENANCE)
    metadata = gguf_metadata(f16.path)
    assert metadata["general.architecture"] == "olmo2" and metadata["tokenizer.ggml.pre"] == "smollm"
    fidelity = verify_gguf(f16.path, olmo2_dir, rfc_texts, PROMPTS, block_size=128, max_blocks=4, max_new_tokens=8)
    assert fidelity.loaded, fidelity.error
    assert fidelity.tokenization_equal and fidelity.tokens_compared > 500, fidelity.first_mismatch
    assert perplexity_within(fidelity, 0.01)[0], perplexity_within(fidelity, 0.01)[1]
    assert read_provenance(f16.path)["cpt.merged_model.sha256"] == "d" * 64


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


def test_tokenizer_metadata_matches_the_official_smollm2_gguf(model_dir, tmp_path):
    """The converter's tokenizer keys equal those in the packaged SmolLM2 GGUF (made by llama.cpp's converter too)."""
    ours = gguf_metadata(convert_to_gguf(model_dir, tmp_path / "m.gguf", PROVENANCE).path)
    official = gguf_metadata(smollm2_gguf_path())
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
        "llama.vocab_size",
        "llama.rope.freq_base",
    ):
        assert ours[key] == official[key], key


def test_unsupported_architecture_fails_before_writing(tmp_path, tokenizer):
    """OPT is a transformers architecture llama.cpp's converter does not register."""
    from transformers import OPTConfig, OPTForCausalLM

    opt_dir = tmp_path / "opt"
    config = OPTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, vocab_size=len(tokenizer)
    )
    OPTForCausalLM(config).save_pretrained(opt_dir)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous good gguf")
    with pytest.raises(ValueError, match="OPTForCausalLM.*does not convert"):
        convert_to_gguf(opt_dir, out, PROVENANCE)
    assert out.read_bytes() == b"previous good gguf"
    with pytest.raises(ValueError, match="OPTForCausalLM"):
        export_gguf(opt_dir, tmp_path / "export", PROVENANCE, ["some text"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt", "out.gguf"]


def _with_foreign_pre_tokenizer(model_dir: Path, folder: Path) -> Path:
    """The model with a byte-level pre-tokenizer that adds a prefix space: a probe hash llama.cpp does not know."""
    shutil.copytree(model_dir, folder)
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return folder


def test_foreign_pre_tokenizer_fails_and_leaves_the_good_file(model_dir, tmp_path):
    foreign = _with_foreign_pre_tokenizer(model_dir, tmp_path / "foreign")
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous good gguf")
    with pytest.raises(LlamaToolError, match="pre-tokenizer"):
        convert_to_gguf(foreign, out, PROVENANCE)
    assert out.read_bytes() == b"previous good gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out.gguf"]


# ---- the whole export -------------------------------------------------------------------------------------------
def test_export_writes_files_imatrix_plot_and_modelfile(export):
    names = sorted(p.name for p in export.folder.iterdir())
    assert names == [
        "Modelfile",
        "imatrix.gguf",
        "model-F16.gguf",
        "model-Q4_K_M.gguf",
        "model-Q8_0.gguf",
        "size_vs_kld.png",
        "verification.json",
    ]
    assert [f.file_type for f in export.files] == ["F16", "Q8_0", "Q4_K_M"]
    for gguf_file in export.files:
        assert gguf_file.bytes == gguf_file.path.stat().st_size and gguf_file.sha256 == sha256_file(gguf_file.path)
    f16, q8, q4 = export.files
    assert f16.bits_per_weight > q8.bits_per_weight > q4.bits_per_weight
    assert "Q4_K" in q4.tensor_types and "Q5_0" not in q4.tensor_types  # 256-wide rows: real K-quants
    assert export.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert export.imatrix.entries == 14 and export.imatrix.sha256 == sha256_file(export.imatrix.path)


def test_kld_rows_per_type_with_and_without_imatrix(export, config):
    rows = export.quant_fidelity
    assert [(r.file_type, r.imatrix) for r in rows] == [
        ("Q8_0", False),
        ("Q8_0", True),
        ("Q4_K_M", False),
        ("Q4_K_M", True),
    ]
    for row in rows:
        assert 0 <= row.median_kld <= row.p99_kld <= row.max_kld and row.mean_kld > 0
        assert 0 < row.same_top_share <= 1 and math.isfinite(row.ppl_ratio) and row.ppl_base > 1
        assert row.positions >= 100 and row.context == 256
    q8 = min(r.mean_kld for r in rows if r.file_type == "Q8_0")
    q4 = min(r.mean_kld for r in rows if r.file_type == "Q4_K_M")
    assert q8 < q4  # 8 bits stay closer to F16 than 4
    kept = {f.path.name for f in export.files}
    for file_type in ("Q8_0", "Q4_K_M"):
        pair = [r for r in rows if r.file_type == file_type]
        best = min(pair, key=lambda r: r.mean_kld)
        assert best.file == gguf_file_name("model", file_type) in kept
        with_imatrix = gguf_metadata(export.folder / best.file).get("quantize.imatrix.file")
        assert bool(with_imatrix) is best.imatrix  # llama-quantize records the imatrix it used


def test_type_chosen_by_figures(export, config):
    kept = [r for r in export.quant_fidelity if r.file in {f.path.name for f in export.files}]
    chosen, reason = choose_type(kept, config.max_mean_kld)
    assert export.chosen_type == (chosen.file_type if chosen else "F16")
    assert export.choice_reason == reason or "F16" in export.choice_reason
    assert f"FROM ./model-{export.chosen_type}.gguf" in export.modelfile.read_text().splitlines()
    assert export.fidelity[-1].file_type == export.chosen_type


def test_f16_gguf_scores_the_scoring_core_blocks(export, rfc_texts):
    f16 = export.fidelity[0]
    assert gguf_loads(f16)[0] and tokenization_matches(f16)[0], f16.first_mismatch
    assert f16.tokens_compared > 500 and f16.texts == len(rfc_texts)
    assert perplexity_within(f16, 0.01)[0], perplexity_within(f16, 0.01)[1]
    assert f16.mean_abs_nll_diff < 0.01  # F16 rounding only


def test_verification_file_keeps_tables_and_choice(export):
    stored = json.loads((export.folder / "verification.json").read_text())
    assert stored["table"] == json.loads(json.dumps(export.table()))
    assert [row["mean_kld"] for row in stored["kld"]] == [r.mean_kld for r in export.quant_fidelity]
    assert stored["chosen_type"] == export.chosen_type and stored["choice_reason"] == export.choice_reason
    assert stored["provenance"]["cpt.run_id"] == "run-42"
    assert "mean_kld" in export.markdown() and "Modelfile type" in export.markdown()


def test_provenance_in_every_file(export):
    for gguf_file in export.files:
        found = read_provenance(gguf_file.path)
        assert found["general.name"] == "cpt-tiny-test"
        assert found["cpt.base_model.sha256"] == "a" * 64 and found["cpt.adapter.config_sha256"] == "b" * 64
        assert found["cpt.training.config_sha256"] == "c" * 64 and found["cpt.merged_model.sha256"] == "d" * 64
        assert found["cpt.version.llama_cpp_python"] and found["cpt.version.llama_cpp_sources"]
        datetime.fromisoformat(found["cpt.created_at"])
    assert export.provenance == read_provenance(export.files[0].path)


# ---- bad input --------------------------------------------------------------------------------------------------
def test_type_needing_an_imatrix_without_one_fails_before_writing(export, tmp_path, sources):
    with pytest.raises(ValueError, match="IQ2_XS.*importance matrix"):
        GGUFExportConfig(quantizations=("IQ2_XS",), use_imatrix=False)
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="importance matrix"):
        quantize_gguf(export.files[0].path, out, "IQ2_XS", sources=sources)
    assert not out.exists()
    assert GGUFExportConfig(quantizations=("IQ2_XS",)).quantizations == ("IQ2_XS",)  # fine with the imatrix on


def test_imatrix_for_another_model_fails_before_writing(export, olmo2_dir, tmp_path, sources):
    other = convert_to_gguf(olmo2_dir, tmp_path / "olmo2.gguf", PROVENANCE, sources=sources)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous good gguf")
    with pytest.raises(ValueError, match="not computed for olmo2.gguf"):
        quantize_gguf(other.path, out, "Q4_K_M", imatrix=export.imatrix.path, sources=sources)
    assert out.read_bytes() == b"previous good gguf"
    check_imatrix(export.imatrix.path, export.files[0].path)  # its own model is fine
    not_imatrix = tmp_path / "legacy.dat"
    not_imatrix.write_bytes(b"\x01\x00\x00\x00legacy")
    with pytest.raises(ValueError, match="not an imatrix in GGUF format"):
        check_imatrix(not_imatrix, export.files[0].path)


def test_failed_export_leaves_the_previous_export_intact(export, model_dir, rfc_texts, train_texts, config, tmp_path):
    previous = tmp_path / "gguf"
    shutil.copytree(export.folder, previous)
    before = {p.name: sha256_file(p) for p in sorted(previous.iterdir())}
    foreign = _with_foreign_pre_tokenizer(model_dir, tmp_path / "foreign-tokenizer")
    with pytest.raises(LlamaToolError, match="pre-tokenizer"):  # fails in the converter, after the HF reference
        export_gguf(foreign, previous, PROVENANCE, rfc_texts, config, train_texts=train_texts)
    with pytest.raises(ValueError, match="verification text"):
        export_gguf(model_dir, previous, PROVENANCE, ["", "  "], config, train_texts=train_texts)
    with pytest.raises(ValueError, match="train-split text"):
        export_gguf(model_dir, previous, PROVENANCE, rfc_texts, config)
    assert {p.name: sha256_file(p) for p in sorted(previous.iterdir())} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign-tokenizer", "gguf"], "nothing written beside it"


def test_weights_that_overflow_half_precision_fail_naming_it(model_dir, rfc_texts, train_texts, config, tmp_path):
    """A diverged run's weights: finite in float32 (HF scores them), but the MLP's activations pass 65504, so the
    F16 GGUF's log-probabilities are NaN. The export fails saying so, before llama-imatrix (whose own message
    llama.cpp's threaded logger can lose), and writes nothing."""
    diverged = _scaled(shutil.copytree(model_dir, tmp_path / "diverged"), 300, ("gate_proj", "up_proj"))
    out = tmp_path / "gguf"
    with pytest.raises(ValueError, match=r"non-finite log-probabilities .* overflow half precision") as failure:
        export_gguf(diverged, out, PROVENANCE, rfc_texts, config, train_texts=train_texts)
    assert "the HF model's is " in str(failure.value) and "nan" not in str(failure.value).split("HF model's is ")[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged"], "nothing written"


def test_failed_quantization_leaves_the_previous_file(tmp_path, sources):
    not_gguf = tmp_path / "in.gguf"
    not_gguf.write_bytes(b"\0" * 4096)
    good = tmp_path / "out.gguf"
    good.write_bytes(b"previous good gguf")
    with pytest.raises(LlamaToolError, match="llama-quantize failed"):
        quantize_gguf(not_gguf, good, "q8_0", sources=sources)
    assert good.read_bytes() == b"previous good gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "out.gguf"]


def test_sdist_of_another_version_is_refused(tmp_path):
    fake = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    fake.write_bytes(b"")
    with pytest.raises(ValueError, match="0.0.1.*0.3.36 is installed"):
        unpack(fake, tmp_path / "cache", "0.3.36")
    with pytest.raises(LlamaToolError, match="not built"):
        LlamaCpp("0.3.36", tmp_path / "nowhere").tool("llama-quantize")


def test_check_convertible_names_the_architecture(model_dir, olmo2_dir, sources):
    assert check_convertible(model_dir, sources) == "LlamaForCausalLM"
    assert check_convertible(olmo2_dir, sources) == "Olmo2ForCausalLM"


# ---- pure functions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tokens", "context", "max_tokens", "expected"),
    [
        (10_000, 512, 8192, (512, 16)),
        (10_000, 512, 2048, (512, 4)),
        (1_500, 512, 8192, (512, 2)),
        (700, 512, 8192, (256, 2)),
        (300, 512, 8192, (128, 2)),
    ],
)
def test_chunk_plan(tokens, context, max_tokens, expected):
    assert chunk_plan(tokens, context, max_tokens) == expected


def test_chunk_plan_refuses_too_little_text():
    with pytest.raises(ValueError, match="200 tokens"):
        chunk_plan(200, 512, 8192)


KLD_OUTPUT = """
kl_divergence: computing over 8 chunks, n_ctx=512, batch_size=512, n_seq=1
====== Perplexity statistics ======
Mean PPL(Q)                   :  13.042915 ±   0.434563
Mean PPL(base)                :  12.600000 ±   0.420000
Mean PPL(Q)/PPL(base)         :   1.035152 ±   0.004130
====== KL divergence statistics ======
Mean    KLD:   0.031234 ±   0.000456
Maximum KLD:   2.345678
99.9%   KLD:   1.234567
99.0%   KLD:   0.456789
Median  KLD:   0.012345
====== Token probability statistics ======
Same top p: 91.912 ± 0.123 %
"""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("[1]23.4567,[2]21.3052,\nFinal estimate: PPL = 21.3052 +/- 1.2", 21.3052),
        ("[1]-nan,[2]-nan,\nUnexpected negative standard deviation of log(prob)", math.nan),
        ("[1]inf,", math.inf),
        ("perplexity: tokenizing the input ..", None),
    ],
)
def test_running_perplexity(output, expected):
    from cpt_assets.lib.gguf_fidelity import running_perplexity

    found = running_perplexity(output)
    if expected is None:
        assert found is None
    elif math.isnan(expected):
        assert found is not None and math.isnan(found)
    else:
        assert found == expected


def test_parse_kld_output():
    stats = parse_kld_output(KLD_OUTPUT)
    assert stats == {
        "mean_kld": 0.031234,
        "median_kld": 0.012345,
        "p99_kld": 0.456789,
        "max_kld": 2.345678,
        "same_top_pct": 91.912,
        "ppl": 13.042915,
        "ppl_base": 12.6,
        "ppl_ratio": 1.035152,
        "chunks": 8.0,
    }
    with pytest.raises(ValueError, match="mean_kld"):
        parse_kld_output(KLD_OUTPUT.replace("Mean    KLD", "Mean KL"))


def _row(file_type: str, mb: float, mean: float, imatrix: bool = False, p99: float = 0.1) -> QuantFidelity:
    return QuantFidelity(
        file=f"m-{file_type}.gguf",
        file_type=file_type,
        imatrix=imatrix,
        bytes=int(mb * 1e6),
        bits_per_weight=5.0,
        mean_kld=mean,
        median_kld=mean / 2,
        p99_kld=p99,
        max_kld=1.0,
        same_top_share=0.9,
        ppl=10.0,
        ppl_base=9.9,
        ppl_ratio=10 / 9.9,
        positions=2040,
        context=512,
        seconds=1.0,
    )


ROWS = [
    _row("Q4_0", 90, 0.08),
    _row("Q4_K_M", 105, 0.04, True),
    _row("Q6_K", 140, 0.01, p99=0.05),
    _row("Q8_0", 145, 0.002),
]


@pytest.mark.parametrize(
    ("max_mean", "max_p99", "expected"),
    [(0.05, None, "Q4_K_M"), (0.1, None, "Q4_0"), (0.02, None, "Q6_K"), (0.05, 0.06, "Q6_K"), (0.001, None, None)],
)
def test_choose_type(max_mean, max_p99, expected):
    chosen, reason = choose_type(ROWS, max_mean, max_p99)
    assert (chosen.file_type if chosen else None) == expected
    assert (f"{expected}" in reason) if expected else ("no candidate" in reason and "Q8_0" in reason)


def test_kld_within_describes_the_figures():
    passed, description = kld_within(ROWS[1], 0.05)
    assert passed and "Q4_K_M +imatrix: mean KLD 0.04000" in description and "met" in description
    passed, description = kld_within(ROWS[0], 0.05)
    assert not passed and "exceeded" in description


def test_write_text_joins_documents(tmp_path):
    path = write_text(["  a  ", "", "b"], tmp_path / "t.txt")
    assert path.read_text() == "a\n\nb"


@pytest.mark.parametrize(
    ("given", "imatrix", "expected"),
    [("Q4_K_M", False, "Q4_K_M"), ("q8_0", False, "Q8_0"), (" Q5_K_S ", False, "Q5_K_S"), ("IQ2_XS", True, "IQ2_XS")],
)
def test_validate_quantization_accepts(given, imatrix, expected):
    assert validate_quantization(given, imatrix=imatrix) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [("Q4_K_X", "Unknown"), ("F16", "Unknown"), ("F32", "Unknown"), ("", "Unknown"), ("IQ2_XS", "importance matrix")],
)
def test_validate_quantization_rejects(given, message):
    with pytest.raises(ValueError, match=message):
        validate_quantization(given)


def test_quantization_types_cover_the_candidates():
    assert {"Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"} <= set(quantization_types())
    assert "IQ2_XS" in quantization_types(imatrix=True) and "IQ2_XS" not in quantization_types()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantizations": ("Q8_0", "q8_0")}, "twice"),
        ({"f16_perplexity_tolerance": 0}, "f16_perplexity_tolerance"),
        ({"context_length": 8}, "context_length"),
        ({"block_size": 4}, "block_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"modelfile_type": "Q2_K"}, "modelfile_type"),
        ({"kld_context": 64}, "kld_context"),
        ({"max_mean_kld": 0}, "KLD bounds"),
    ],
)
def test_export_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GGUFExportConfig(**kwargs)


def test_export_config_defaults():
    config = GGUFExportConfig(quantizations="q4_k_m", modelfile_type="f16")
    assert config.quantizations == ("Q4_K_M",) and config.modelfile_type == "F16"
    assert GGUFExportConfig().quantizations == ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
    assert GGUFExportConfig().use_imatrix and GGUFExportConfig().modelfile_type is None


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


def test_unloadable_file_is_reported_not_raised(reference, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF but not really" * 100)
    fidelity = verify_gguf(garbage, reference=reference)
    assert not fidelity.loaded and fidelity.error
    for check in (gguf_loads, tokenization_matches, lambda f: perplexity_within(f, 0.01)):
        passed, description = check(fidelity)
        assert not passed and "garbage.gguf" in description
    assert fidelity_table([fidelity])[0]["gguf_ppl"] is None


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
            "seconds": 1.0,
        }
    ]
    assert "| p | a b | a b |" in fidelity_markdown([fidelity])


def test_gguf_file_name():
    assert gguf_file_name("model", "q4_k_m") == "model-Q4_K_M.gguf"
