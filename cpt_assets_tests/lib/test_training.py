"""Continual pretraining on CPU with a tiny Llama built on the real SmolLM2 tokenizer and real standards text."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cpt_assets.lib.checkpoints import checkpoint_step, is_complete, newest_checkpoint
from cpt_assets.lib.lake import RUN_MARKER, TRAINING_INFO_FILE
from cpt_assets.lib.training import (
    TrainingConfig,
    check_inputs,
    effective_schedule,
    is_installed,
    loss_table,
    plot_losses,
    resolve_plan,
    train_adapter,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Small and quick on 2 cores: 4 blocks of 32 tokens per step, a high learning rate so a few steps show learning.
FAST = TrainingConfig(
    block_size=32,
    per_device_batch_size=4,
    cpu_gradient_accumulation_steps=1,
    max_steps=8,
    cpu_max_tokens=0,
    learning_rate=3e-3,
    eval_steps=4,
    save_steps=100,
    max_eval_blocks=8,
    lora_r=8,
    lora_alpha=16,
    device="cpu",
)


@pytest.fixture(scope="module")
def texts(corpus_dir) -> dict[str, list[str]]:
    """Real text: FIPS 199 (train) and FIPS 200 (validation), both NIST security-categorisation standards."""
    import pymupdf

    def pages(name: str, limit: int) -> list[str]:
        with pymupdf.open(corpus_dir / "nist" / name) as doc:
            return [page.get_text() for page in doc][:limit]

    return {"train": pages("FIPS199.pdf", 6), "validation": ["\n".join(pages("FIPS200.pdf", 3))]}


def adapter_tensors(adapter_dir: Path) -> dict:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


# ---- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "context", "message"),
    [
        ({"lora_r": -8}, None, "TrainingConfig.lora_r must be > 0, got -8"),
        ({"lora_r": 0}, None, "TrainingConfig.lora_r must be > 0, got 0"),
        ({"block_size": 4096}, 2048, "TrainingConfig.block_size must be <= the model's context length 2048, got 4096"),
        ({"block_size": 0}, None, "TrainingConfig.block_size must be > 0, got 0"),
        ({"device": "tpu"}, None, "TrainingConfig.device must be one of ('auto', 'cpu', 'cuda'), got 'tpu'"),
        ({"method": "dora"}, None, "TrainingConfig.method must be one of"),
        ({"lora_dropout": 1.0}, None, "TrainingConfig.lora_dropout must be in [0, 1), got 1.0"),
        ({"learning_rate": 0.0}, None, "TrainingConfig.learning_rate must be > 0, got 0.0"),
        ({"max_tokens": -1}, None, "TrainingConfig.max_tokens must be >= 0, got -1"),
        ({"lora_bias": "some"}, None, "TrainingConfig.lora_bias must be one of"),
        ({"lr_scheduler_type": "step"}, None, "TrainingConfig.lr_scheduler_type must be one of"),
        ({"target_modules": ()}, None, "TrainingConfig.target_modules must name at least one module"),
    ],
)
def test_validate_names_field_and_value(changes, context, message):
    with pytest.raises(ValueError) as error:
        replace(TrainingConfig(), **changes).validate(context)
    assert message in str(error.value)


def test_defaults_are_the_seeds_and_valid():
    config = TrainingConfig().validate(8192)
    assert (config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_bias) == (128, 32, 0.0, "none")
    assert config.use_rslora and config.learning_rate == 5e-5 and config.lr_scheduler_type == "cosine"
    assert (config.per_device_batch_size, config.gradient_accumulation_steps) == (2, 8)
    assert (config.num_epochs, config.logging_steps, config.save_steps, config.save_total_limit) == (1.0, 1, 500, 3)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_config_hash_is_stable_and_sensitive():
    assert TrainingConfig().config_hash() == TrainingConfig().config_hash()
    assert TrainingConfig().config_hash() != TrainingConfig(lora_r=64).config_hash()
    assert TrainingConfig.from_dict(TrainingConfig(seed=7).to_dict()) == TrainingConfig(seed=7)
    with pytest.raises(ValueError, match="Unknown TrainingConfig field"):
        TrainingConfig.from_dict({"rank": 4})


@pytest.mark.parametrize(
    ("device", "method", "has_cuda", "expected_device", "expected_method", "reason_part"),
    [
        ("auto", "auto", False, "cpu", "lora", ""),
        ("cpu", "qlora", True, "cpu", "lora", "needs CUDA"),
        ("auto", "unsloth", False, "cpu", "lora", "needs CUDA"),
        ("auto", "lora", True, "cuda", "lora", ""),
        (
            "cuda",
            "qlora",
            True,
            "cuda",
            "qlora" if is_installed("bitsandbytes") else "lora",
            "" if is_installed("bitsandbytes") else "bitsandbytes is not installed",
        ),
        (
            "auto",
            "auto",
            True,
            "cuda",
            "unsloth" if is_installed("unsloth") else "lora",
            "" if is_installed("unsloth") else "unsloth is not installed",
        ),
    ],
)
def test_resolve_plan_picks_device_and_method_with_reasons(
    device, method, has_cuda, expected_device, expected_method, reason_part
):
    plan = resolve_plan(TrainingConfig(device=device, method=method), has_cuda=has_cuda)
    assert (plan.device, plan.method) == (expected_device, expected_method)
    assert reason_part in plan.fallback_reason
    assert bool(reason_part) == bool(plan.fallback_reason)
    if expected_device == "cpu":
        assert not plan.fused_cross_entropy and not plan.torch_compile


def test_forcing_cuda_without_cuda_fails_fast():
    with pytest.raises(ValueError, match="TrainingConfig.device is 'cuda' but torch sees no CUDA device"):
        resolve_plan(TrainingConfig(device="cuda"), has_cuda=False)


@pytest.mark.parametrize(
    ("changes", "blocks", "steps", "tokens_per_step"),
    [
        ({}, 1000, 10_240 // (2 * 256), 2 * 256),  # the CPU default: a token budget, accumulation 1
        ({"cpu_max_tokens": 0}, 1000, 500, 512),  # no budget: one epoch
        ({"cpu_max_tokens": 0, "num_epochs": 2.0}, 1000, 1000, 512),
        ({"max_steps": 3}, 1000, 3, 512),
        ({"cpu_max_tokens": 0, "max_tokens": 5_000}, 1000, 9, 512),
        ({}, 7, 4, 512),  # fewer blocks than the budget: the epoch ends first (ceil(7 / 2) steps)
    ],
)
def test_cpu_schedule_applies_budgets(changes, blocks, steps, tokens_per_step):
    config = replace(TrainingConfig(), **changes)
    plan = resolve_plan(config, has_cuda=False)
    schedule = effective_schedule(config, plan, blocks)
    assert (schedule["planned_steps"], schedule["tokens_per_step"]) == (steps, tokens_per_step)


def test_cuda_schedule_keeps_the_seed_accumulation():
    config = TrainingConfig()
    plan = resolve_plan(replace(config, method="lora"), has_cuda=True)
    schedule = effective_schedule(config, plan, 1600)
    assert schedule["gradient_accumulation_steps"] == 8
    assert schedule["planned_steps"] == 100 and schedule["max_steps_arg"] == -1  # one epoch, no CPU budget


# ---- fail fast ---------------------------------------------------------------------------------------------------


BAD_INPUTS = [
    # (id, model folder, train, validation, config changes, error, message)
    ("train missing", "tiny", None, "real", {}, ValueError, "The train split is missing"),
    ("train empty", "tiny", [], "real", {}, ValueError, "The train split is empty"),
    ("train blank texts", "tiny", ["", "  \n"], "real", {}, ValueError, "The train split is empty"),
    ("train blank chunks", "tiny", {"doc": [" "]}, "real", {}, ValueError, "The train split is empty"),
    ("validation missing", "tiny", "real", None, {}, ValueError, "The validation split is missing"),
    ("validation empty", "tiny", "real", [], {}, ValueError, "The validation split is empty"),
    ("no weights", "no-weights", "real", "real", {}, FileNotFoundError, "has no weights"),
    ("no config", "no-config", "real", "real", {}, FileNotFoundError, "has no config.json"),
    ("no folder", "absent", "real", "real", {}, FileNotFoundError, "does not exist"),
    ("negative rank", "tiny", "real", "real", {"lora_r": -1}, ValueError, "TrainingConfig.lora_r must be > 0, got -1"),
    ("negative alpha", "tiny", "real", "real", {"lora_alpha": -4}, ValueError, "TrainingConfig.lora_alpha must be > 0"),
    (
        "block above context",
        "tiny",
        "real",
        "real",
        {"block_size": 4096},
        ValueError,
        "TrainingConfig.block_size must be <= the model's context length 2048, got 4096",
    ),
    ("unknown device", "tiny", "real", "real", {"device": "tpu"}, ValueError, "TrainingConfig.device must be one of"),
    (
        "cuda forced without cuda",
        "tiny",
        "real",
        "real",
        {"device": "cuda"},
        ValueError,
        "TrainingConfig.device is 'cuda' but torch sees no CUDA device",
    ),
    (
        "validation shorter than a block",
        "tiny",
        "real",
        ["too short"],
        {},
        ValueError,
        "The validation split has 3 tokens, fewer than one block of block_size=32",
    ),
]


@pytest.mark.parametrize(
    ("model", "train", "validation", "changes", "error", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_fails_fast_with_a_clear_message(
    tmp_path, tiny_model_dir, texts, model, train, validation, changes, error, message
):
    if changes.get("device") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is present here: forcing it is not an error")
    folders = {"tiny": tiny_model_dir, "absent": tmp_path / "absent"}
    for name, keep in (("no-weights", "config.json"), ("no-config", "model.safetensors")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        shutil.copy(tiny_model_dir / keep, folders[name] / keep)
    train = texts["train"] if train == "real" else train
    validation = texts["validation"] if validation == "real" else validation
    with pytest.raises(error) as raised:
        train_adapter(folders[model], train, validation, replace(FAST, **changes), tmp_path / "a", tmp_path / "c")
    assert message in str(raised.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # failed before any training


def test_check_inputs_returns_the_context_length(tiny_model_dir, texts):
    assert check_inputs(tiny_model_dir, texts["train"], texts["validation"], FAST) == 2048


# ---- training ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, texts):
    """One short CPU run, shared by the tests that read its result."""
    work = tmp_path_factory.mktemp("train")
    logs: list[dict] = []
    result = train_adapter(
        tiny_model_dir, texts["train"], texts["validation"], FAST, work / "adapter", work / "ckpt", logs.append
    )
    return result, work, logs


def test_short_run_lowers_validation_loss(trained):
    result, _, _ = trained
    assert [p.step for p in result.eval_losses] == [0, 4, 8]  # step 0 is the base model
    assert result.final_eval_loss < result.base_eval_loss - 0.05
    assert result.train_losses[-1].loss < result.train_losses[0].loss


def test_run_reports_sane_metadata(trained, tiny_model_dir):
    result, work, logs = trained
    assert (result.device, result.method, result.precision, result.fallback_reason) == ("cpu", "lora", "fp32", "")
    assert result.steps == result.steps_this_run == result.planned_steps == 8
    assert [p.step for p in result.train_losses] == list(range(1, 9))
    assert result.tokens_seen == 8 * 4 * 32
    assert len(result.step_seconds) == 8 and result.tokens_per_second > 0
    # LoRA r=8 on 7 projections of 2 layers (hidden 64, kv 32, intermediate 128): r * (in + out) each.
    per_layer = 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64))
    assert result.trainable_parameters == 2 * per_layer
    assert 0 < result.trainable_share < 0.1
    assert result.peak_memory_bytes > 50 * 2**20
    assert result.adapter_bytes > result.trainable_parameters * 4  # float32 adapter weights plus config
    assert result.resumed_from_checkpoint == "" and "starting fresh" in result.resume_reason
    assert result.train_blocks > 0 and result.validation_blocks == 8 and result.block_size == 32
    assert result.embeddings_changed is None
    assert (work / "adapter" / "adapter_config.json").exists()
    info = json.loads((work / "adapter" / TRAINING_INFO_FILE).read_text())
    assert info["result"]["steps"] == 8 and info["run"]["config_hash"] == FAST.config_hash()
    assert any("eval_loss" in entry for entry in logs) and any("loss" in entry for entry in logs)
    rows = loss_table(result)
    assert rows[0] == {"step": 0, "train_loss": None, "validation_loss": result.base_eval_loss}
    assert len(rows) == 9


def test_plot_is_a_png(trained, tmp_path):
    result, _, _ = trained
    path = plot_losses(result, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_same_seed_gives_the_same_adapter(trained, tmp_path, tiny_model_dir, texts):
    result, work, _ = trained
    again = train_adapter(
        tiny_model_dir, texts["train"], texts["validation"], FAST, tmp_path / "adapter", tmp_path / "ckpt"
    )
    first, second = adapter_tensors(work / "adapter"), adapter_tensors(tmp_path / "adapter")
    assert first.keys() == second.keys() and len(first) == 2 * 7 * 2
    assert all((first[k] == second[k]).all() for k in first)
    assert again.train_losses == result.train_losses and again.eval_losses == result.eval_losses
    other = train_adapter(
        tiny_model_dir,
        texts["train"],
        texts["validation"],
        replace(FAST, seed=7, max_steps=2),
        tmp_path / "other",
        tmp_path / "ckpt-other",
    )
    assert other.train_losses[0] != result.train_losses[0]  # another seed: another data order and init


def test_rematerialising_resumes_from_the_final_checkpoint(trained, tiny_model_dir, texts):
    result, work, _ = trained
    assert newest_checkpoint(work / "ckpt").name == "checkpoint-8"  # the Trainer saves at the last step
    before = adapter_tensors(work / "adapter")
    again = train_adapter(tiny_model_dir, texts["train"], texts["validation"], FAST, work / "adapter", work / "ckpt")
    assert again.resumed_from_checkpoint == "checkpoint-8" and again.steps_this_run == 0 and again.steps == 8
    after = adapter_tensors(work / "adapter")
    assert all((before[k] == after[k]).all() for k in before)  # the published adapter is the finished run's
    assert again.eval_losses[0] == result.eval_losses[0] and again.train_losses == result.train_losses


def test_changed_config_starts_fresh(tmp_path, tiny_model_dir, texts):
    ckpt = tmp_path / "ckpt"
    config = replace(FAST, max_steps=2, save_steps=1)
    train_adapter(tiny_model_dir, texts["train"], texts["validation"], config, tmp_path / "a", ckpt)
    assert newest_checkpoint(ckpt).name == "checkpoint-2"
    changed = train_adapter(
        tiny_model_dir, texts["train"], texts["validation"], replace(config, lora_alpha=8), tmp_path / "a", ckpt
    )
    assert changed.resumed_from_checkpoint == "" and "config_hash" in changed.resume_reason
    assert json.loads((ckpt / RUN_MARKER).read_text())["config_hash"] == replace(config, lora_alpha=8).config_hash()


def test_rewritten_base_model_starts_fresh(tmp_path, tiny_model_dir, texts):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = replace(FAST, max_steps=2, save_steps=1)
    train_adapter(model, texts["train"], texts["validation"], config, tmp_path / "a", tmp_path / "c")
    again = train_adapter(model, texts["train"], texts["validation"], config, tmp_path / "a", tmp_path / "c")
    assert again.resumed_from_checkpoint == "checkpoint-2"  # same model files: resume (here: nothing left to do)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # a re-export into the same folder
    fresh = train_adapter(model, texts["train"], texts["validation"], config, tmp_path / "a", tmp_path / "c")
    assert fresh.resumed_from_checkpoint == "" and "base_model_files" in fresh.resume_reason
    assert fresh.steps_this_run == 2


def test_trainable_embeddings_move_with_their_own_learning_rate(tmp_path, tiny_model_dir, texts):
    config = replace(FAST, max_steps=2, train_embeddings=True, embedding_learning_rate=1e-3)
    result = train_adapter(tiny_model_dir, texts["train"], texts["validation"], config, tmp_path / "a", tmp_path / "c")
    assert result.embeddings_changed is True
    saved = adapter_tensors(tmp_path / "a")
    assert any("embed_tokens" in key for key in saved)
    # The embedding matrix (49,152 x 64) is now trainable: far more than the LoRA weights alone.
    assert result.trainable_parameters > 49_152 * 64


# ---- kill and resume -----------------------------------------------------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
from cpt_assets.lib.training import TrainingConfig, train_adapter
args = json.loads(Path(sys.argv[1]).read_text())
config = TrainingConfig.from_dict(args["config"])
train_adapter(Path(args["model"]), args["train"], args["validation"], config, Path(args["adapter"]), Path(args["ckpt"]))
"""


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, texts):
    """A run SIGKILLed after its first checkpoint resumes from it and ends where an uninterrupted run ends.

    Proves the resume path restores adapter weights, optimizer, scheduler, RNG and data order (transformers #35850,
    peft #859), not only that it does not crash: losses at every step and the final adapter are compared with an
    uninterrupted run of the same config. The killed run is a real process (SIGKILL, no clean-up), the resumed one
    is a call in this process. About 20 s on 2 cores, so it stays in the default suite.
    """
    config = replace(FAST, max_steps=12, save_steps=3, eval_steps=6)
    reference = train_adapter(
        tiny_model_dir, texts["train"], texts["validation"], config, tmp_path / "ref", tmp_path / "ref-ckpt"
    )

    spec = {
        "config": config.to_dict(),
        "model": str(tiny_model_dir),
        "train": texts["train"],
        "validation": texts["validation"],
        "adapter": str(tmp_path / "adapter"),
        "ckpt": str(tmp_path / "ckpt"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", CHILD, str(tmp_path / "spec.json")]

    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        if (tmp_path / "ckpt" / "checkpoint-3").is_dir() and is_complete(tmp_path / "ckpt" / "checkpoint-3"):
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "adapter").exists()  # killed before the end: no adapter was published
    killed_at = newest_checkpoint(tmp_path / "ckpt")
    assert killed_at is not None and killed_at.name != "checkpoint-12"

    # Called again with the same config and data (in this process: the resume must not depend on leftovers).
    resumed = train_adapter(
        tiny_model_dir, texts["train"], texts["validation"], config, tmp_path / "adapter", tmp_path / "ckpt"
    )
    assert resumed.resumed_from_checkpoint == killed_at.name
    assert resumed.steps == 12 and resumed.steps_this_run == 12 - checkpoint_step(killed_at)

    # The resumed trajectory is the uninterrupted one: same losses at every step, same final adapter.
    assert [p.step for p in resumed.train_losses] == [p.step for p in reference.train_losses] == list(range(1, 13))
    assert [p.loss for p in resumed.train_losses] == pytest.approx([p.loss for p in reference.train_losses], rel=1e-5)
    assert [p.step for p in resumed.eval_losses] == [p.step for p in reference.eval_losses] == [0, 6, 12]
    assert [p.loss for p in resumed.eval_losses] == pytest.approx([p.loss for p in reference.eval_losses], rel=1e-5)
    a, b = adapter_tensors(tmp_path / "ref"), adapter_tensors(tmp_path / "adapter")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6 * max(1.0, a[key].abs().max().item()), key


# ---- the default on the real base model ------------------------------------------------------------------------------

VALIDATION_PDFS = ("nist/FIPS200.pdf", "nist/SP800-145.pdf", "ietf/rfc6749.txt.pdf")


@pytest.mark.slow
def test_default_config_on_real_smollm2_lowers_validation_loss(tmp_path, corpus_dir):
    """The embedded defaults on the real SmolLM2-135M-Instruct, CPU: the budget ends the run and validation loss falls.

    About 5 minutes on 2 cores (export 40 s, 20 steps of 512 tokens at ~70 tokens/s, three evaluations of 24
    blocks), hence slow. Train: the NIST and IETF PDFs' text; validation: three documents held out of it.
    """
    import pymupdf

    from cpt_assets.lib.base_model import export_base_model

    def text(path: Path) -> str:
        with pymupdf.open(path) as doc:
            return "\n".join(page.get_text() for page in doc)

    pdfs = sorted((corpus_dir / "nist").glob("*.pdf")) + sorted((corpus_dir / "ietf").glob("*.pdf"))
    held_out = {corpus_dir / name for name in VALIDATION_PDFS}
    train = {p.name: [text(p)] for p in pdfs if p not in held_out}
    validation = {p.name: [text(p)] for p in pdfs if p in held_out}
    assert len(validation) == 3 and len(train) == len(pdfs) - 3

    base = export_base_model("smollm2-135m-instruct", tmp_path / "base").path
    config = TrainingConfig()
    result = train_adapter(base, train, validation, config, tmp_path / "adapter", tmp_path / "ckpt")

    assert (result.device, result.method, result.precision) == ("cpu", "lora", "fp32")
    assert result.steps == result.planned_steps == config.cpu_max_tokens // (2 * config.block_size) == 20
    assert result.tokens_seen == config.cpu_max_tokens
    assert [p.step for p in result.eval_losses] == [0, 10, 20]  # step 0 is the base model
    assert result.final_eval_loss < result.base_eval_loss - 0.05
    assert 0.2 < result.trainable_share < 0.25  # r=128 on 7 projections of 30 layers: 39 M of 174 M
    assert newest_checkpoint(tmp_path / "ckpt").name == "checkpoint-20"


# ---- the CUDA profile, out-of-memory retries, MFU -----------------------------------------------------------------


def test_cuda_profile_replaces_the_seed_sized_settings_only_on_cuda():
    config = TrainingConfig()
    assert config.for_device("cpu") == config
    cuda = config.for_device("cuda", 8192)
    assert (cuda.block_size, cuda.per_device_batch_size, cuda.gradient_accumulation_steps) == (2048, 8, 1)
    assert (cuda.learning_rate, cuda.num_epochs) == (3e-4, 5.0)
    assert config.for_device("cuda", 1024).block_size == 1024  # capped at the model's context length
    kept = replace(config, cuda_block_size=0, cuda_learning_rate=0.0).for_device("cuda", 8192)
    assert (kept.block_size, kept.learning_rate) == (config.block_size, config.learning_rate)  # 0: keep the field
    with pytest.raises(ValueError, match="TrainingConfig.cuda_batch_size must be >= 0, got -1"):
        replace(config, cuda_batch_size=-1).validate()


@pytest.mark.parametrize(
    ("batch", "accumulation", "expected"),
    [(32, 1, (16, 2)), (16, 2, (8, 4)), (2, 1, (1, 2)), (3, 1, (1, 2)), (1, 4, None)],
)
def test_out_of_memory_halves_the_batch_and_keeps_the_global_batch(batch, accumulation, expected):
    from cpt_assets.lib.training import smaller_batch

    assert smaller_batch(batch, accumulation) == expected


def test_out_of_memory_is_recognised_by_type_and_message():
    from cpt_assets.lib.training import is_out_of_memory

    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(OutOfMemoryError("boom"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("bad block_size"))


def test_mfu_counts_4n_flops_per_token_against_the_datasheet_peak():
    from cpt_assets.lib.training import mfu

    assert mfu(100_000, 134_515_008, "NVIDIA H200") == pytest.approx(100_000 * 4 * 134_515_008 / 989e12)
    assert mfu(100_000, 134_515_008, "NVIDIA H200", world_size=2) == pytest.approx(
        100_000 * 4 * 134_515_008 / (2 * 989e12)
    )
    assert mfu(100_000, 134_515_008, "") is None  # CPU: no peak to compare with
    assert mfu(0.0, 134_515_008, "NVIDIA H100 80GB HBM3") is None


def test_result_round_trips_through_its_dict(trained):
    from cpt_assets.lib.training import TrainResult

    result = trained[0]
    again = TrainResult.from_dict(json.loads(json.dumps(result.to_dict(), default=str)))
    assert again == result
