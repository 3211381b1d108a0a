"""torchrun data parallelism, tested the way CI can: two CPU processes (gloo) against one, on the tiny Llama.

With the same global batch (2 processes x 1 block against 1 process x 2 blocks) and the same seed, DDP averages
the two ranks' gradients, which is the single process's gradient over the same two blocks (accelerate shards the
same seeded batch order across ranks). So the losses agree up to float reduction order: we allow 1e-3 relative.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from cpt_assets.lib.launch import process_count, train_adapter_launched
from cpt_assets.lib.training import TrainingConfig, TrainResult, train_adapter

LOSS_TOLERANCE = 1e-3  # relative, per logged step

CONFIG = TrainingConfig(
    block_size=32,
    per_device_batch_size=2,
    cpu_gradient_accumulation_steps=1,
    max_steps=6,
    cpu_max_tokens=0,
    learning_rate=3e-3,
    eval_steps=3,
    save_steps=100,
    max_eval_blocks=4,
    lora_r=8,
    lora_alpha=16,
    device="cpu",
)


@pytest.fixture(scope="module")
def texts(corpus_dir) -> dict[str, list[str]]:
    import pymupdf

    with pymupdf.open(corpus_dir / "nist" / "FIPS199.pdf") as doc:
        pages = [page.get_text() for page in doc]
    return {"train": pages[:4], "validation": ["\n".join(pages[4:6])]}


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir, texts):
    single = train_adapter(
        tiny_model_dir, texts["train"], texts["validation"], CONFIG, tmp_path / "a1", tmp_path / "c1"
    )
    progress: list[dict] = []
    ddp = train_adapter_launched(
        2,
        tiny_model_dir,
        texts["train"],
        texts["validation"],
        replace(CONFIG, per_device_batch_size=1),
        tmp_path / "a2",
        tmp_path / "c2",
        progress_callback=progress.append,
    )
    assert isinstance(ddp, TrainResult) and ddp.world_size == 2 and single.world_size == 1
    assert ddp.steps == single.steps == 6
    assert [p.step for p in ddp.train_losses] == [p.step for p in single.train_losses]
    for one, two in zip(single.train_losses, ddp.train_losses, strict=True):
        assert two.loss == pytest.approx(one.loss, rel=LOSS_TOLERANCE)
    for one, two in zip(single.eval_losses, ddp.eval_losses, strict=True):
        assert two.loss == pytest.approx(one.loss, rel=LOSS_TOLERANCE)
    assert (tmp_path / "a2" / "adapter_model.safetensors").is_file()
    assert any("loss" in line for line in progress)  # rank 0's log lines reached the parent


def test_a_failing_child_raises_with_its_output(tmp_path, texts):
    with pytest.raises(RuntimeError, match="torchrun with 2 training processes exited with"):
        train_adapter_launched(
            2, tmp_path / "absent", texts["train"], texts["validation"], CONFIG, tmp_path / "a", tmp_path / "c"
        )


def test_process_count_on_cpu_is_one_unless_asked():
    assert process_count(CONFIG, "cpu") == 1
    assert process_count(replace(CONFIG, num_processes=2), "cpu") == 2
