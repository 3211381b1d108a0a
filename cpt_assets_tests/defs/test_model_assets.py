"""The model half of the graph materialised for real on a tiny Llama (real SmolLM2 tokenizer): base model, adapter,
evaluation report, merged model and a GGUF that llama.cpp loads, each with its metadata and checks."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from cpt_assets.defs.evaluation.assets import eval_report
from cpt_assets.defs.export.assets import gguf_model, merged_model
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.gguf_export import read_provenance
from cpt_assets_tests.defs.conftest import check_evaluations, materialization

TINY_TRAINING = {
    "block_size": 64,
    "max_steps": 4,
    "eval_steps": 2,
    "per_device_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "cpu_gradient_accumulation_steps": 1,
    "max_eval_blocks": 4,
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 1e-3,
    "cpu_max_tokens": 0,
}
TINY_EVAL = {
    "max_samples": 2,
    "prompt_tokens": 16,
    "max_new_tokens": 8,
    "block_size": 64,
    "max_eval_blocks": 2,
    "max_control_blocks": 4,
}
TINY_GGUF = {
    "quantizations": ["Q8_0"],
    "block_size": 64,
    "max_blocks": 2,
    "max_new_tokens": 4,
    "context_length": 256,
    "kld_context": 128,
    "kld_max_tokens": 512,
    "imatrix_max_tokens": 512,
}


@pytest.fixture(scope="module")
def model_run(corpus_lake, tiny_model_dir):
    return corpus_lake.materialize(
        [control_text, base_model, lora_adapter, eval_report, merged_model, gguf_model],
        run_config={
            "ops": {
                "base_model": {"config": {"source": str(tiny_model_dir)}},
                "lora_adapter": {"config": TINY_TRAINING},
                "eval_report": {"config": TINY_EVAL},
                "gguf_model": {"config": TINY_GGUF},
            }
        },
    )


def test_base_model_and_adapter_report_what_a_user_judges_training_by(model_run, corpus_lake):
    assert model_run.success
    base = materialization(model_run, "base_model")
    assert base["architecture"] == "LlamaForCausalLM" and base["vocab_size"] == 49152
    adapter = materialization(model_run, "lora_adapter")
    assert adapter["device"] == "cpu" and adapter["method"] == "lora"
    assert adapter["steps"] == 4 and adapter["tokens_seen"] == 4 * 2 * 64
    assert 0 < adapter["trainable_share"] < 1
    assert adapter["validation_loss_base"] > 0 and adapter["validation_loss_final"] > 0
    assert "data:image/png;base64," in adapter["loss_chart"]
    lowered = adapter["validation_loss_final"] < adapter["validation_loss_base"]
    assert adapter["validation_loss_lowered"] is lowered
    assert check_evaluations(model_run)["validation_loss_below_base"].passed is lowered
    assert (corpus_lake.lake.adapter_dir / "adapter_config.json").exists()
    # Its own version folder (config and data decide it); models/adapter/latest points there.
    versioned = corpus_lake.lake.version_dir("adapter", adapter["version"])
    assert adapter["adapter_path"] == str(versioned) and corpus_lake.lake.adapter_dir.resolve() == versioned.resolve()


def test_eval_report_compares_base_and_adapted_with_a_check(model_run, corpus_lake):
    report = materialization(model_run, "eval_report")
    assert report["base_perplexity"] > 1 and report["adapted_perplexity"] > 1
    assert report["test_documents"] >= 1 and report["samples"] == 2
    # The forgetting control: both models on control_text's held-out general English, next to the domain figures.
    assert report["control_base_perplexity"] > 1 and report["control_adapted_perplexity"] > 1
    assert report["control_tokens"] > 0 and report["control_set"] == "control_text's held-out part"
    assert "share_of_parameters_changed" not in report  # weight change is shown once, on merged_model
    assert 0 < materialization(model_run, "merged_model")["changed_parameters_share"] < 1
    assert "data:image/png;base64," in report["model_comparison"]
    written = json.loads((corpus_lake.lake.eval_dir / "report.json").read_text())
    assert written["base"]["perplexity"] == pytest.approx(report["base_perplexity"], rel=1e-3)
    check = check_evaluations(model_run)["adapted_perplexity_below_base"]
    assert check.passed == (report["adapted_perplexity"] < report["base_perplexity"])


def test_gguf_loads_in_llama_cpp_and_carries_its_provenance(model_run, corpus_lake):
    merged = materialization(model_run, "merged_model")
    assert merged["changed_tensors"] > 0
    checks = check_evaluations(model_run)
    assert checks["merge_changed_weights"].passed
    assert checks["gguf_loads_in_llama_cpp"].passed
    assert checks["gguf_tokenization_matches_hf"].passed
    assert checks["gguf_perplexity_within_bound"].passed, checks["gguf_perplexity_within_bound"].description
    assert checks["gguf_kld_within_bound"].passed, checks["gguf_kld_within_bound"].description
    gguf = materialization(model_run, "gguf_model")
    # One HF test perplexity: gguf_model scores eval_report's blocks and shows the eval report's adapted figure.
    assert gguf["hf_perplexity_from"] == "eval_report (same blocks)"
    assert gguf["hf_perplexity"] == pytest.approx(
        materialization(model_run, "eval_report")["adapted_perplexity"], rel=1e-3
    )
    target = corpus_lake.lake.gguf_dir / "model-Q8_0.gguf"  # through the stable "latest" pointer
    versioned = corpus_lake.lake.version_dir("gguf", gguf["version"]) / "model-Q8_0.gguf"
    assert gguf["gguf_path"] == str(versioned) and target.exists()
    assert target.resolve() == versioned.resolve()
    provenance = read_provenance(target)
    assert provenance["cpt.merged_model.sha256"].startswith(merged["weights_sha256"])  # the UI shows 12 characters
    latest_splits = corpus_lake.instance.get_latest_materialization_event(dg.AssetKey("corpus_splits"))
    split_hashes = latest_splits.asset_materialization.metadata["split_hashes"].value
    assert {name: provenance[f"cpt.split.{name}.sha256"] for name in split_hashes} == split_hashes
    assert provenance["cpt.training.config_sha256"] == materialization(model_run, "lora_adapter")["config_hash"]
    assert "FROM ./model-Q8_0.gguf" in (corpus_lake.lake.gguf_dir / "Modelfile").read_text().splitlines()
    # The UI's tables carry the figures (not placeholders): F16 and the chosen file against HF, KLD per candidate.
    fidelity = {r.data["type"]: r.data for r in gguf["fidelity"].records}
    assert set(fidelity) == {"F16", "Q8_0"} and fidelity["F16"]["tokens"] == "equal"
    assert fidelity["F16"]["ppl"] > 1 and abs(fidelity["F16"]["drift_pct"]) < 1
    assert {(c["type"], c["prompt"][:13]) for c in gguf["completions"]} >= {("F16", "The key words")}
    kld = [r.data for r in gguf["kld_table"].records]
    assert {(r["type"], r["imatrix"]) for r in kld} == {("Q8_0", False), ("Q8_0", True)}
    assert all(0 <= r["mean_kld"] < 0.05 and 0 < r["top_pct"] <= 100 for r in kld)


def test_eval_without_continuations_reports_null_text_scores(model_run, corpus_lake):
    first = materialization(model_run, "eval_report")
    config = {**TINY_EVAL, "max_samples": 0}
    result = corpus_lake.materialize([eval_report], run_config={"ops": {"eval_report": {"config": config}}})
    assert result.success
    report = materialization(result, "eval_report")
    assert "base_bleu" not in report and report["samples"] == 0  # not computed: left out, never "None"
    assert report["base_perplexity"] > 1
    # Per-version folders: the first materialisation's report is still where its metadata says, latest is the new one.
    assert report["version"] != first["version"]
    assert json.loads(Path(first["report_json"]).read_text())["config"]["max_samples"] == TINY_EVAL["max_samples"]
    assert (corpus_lake.lake.eval_dir / "report.json").resolve() == Path(report["report_json"]).resolve()
