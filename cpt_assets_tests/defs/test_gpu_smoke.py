"""The GPU steps materialised through Dagster on CUDA (run on the device machine: `pytest -m gpu`).

Proves what CI cannot: lora_adapter and eval_report, as a user materialises them, train and score on the GPU and say
so in their metadata and run tags. Tiny Llama on the real tokenizer, so it takes seconds.
"""

from __future__ import annotations

import pytest

from cpt_assets.defs.evaluation.assets import eval_report
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets_tests.defs.conftest import materialization
from cpt_assets_tests.defs.test_model_assets import TINY_EVAL, TINY_TRAINING

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

# The CUDA profile (block 2048, ...) would not fit the tiny test corpus: keep the tiny shape on the GPU too.
TINY_CUDA = {**TINY_TRAINING, "cuda_block_size": 64, "cuda_batch_size": 2, "cuda_learning_rate": 1e-3}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lora_adapter_and_eval_report_run_on_cuda(corpus_lake, tiny_model_dir):
    result = corpus_lake.materialize(
        [base_model, lora_adapter, eval_report],
        run_config={
            "ops": {
                "base_model": {"config": {"source": str(tiny_model_dir)}},
                "lora_adapter": {"config": TINY_CUDA},
                "eval_report": {"config": TINY_EVAL},
            }
        },
    )
    assert result.success
    adapter = materialization(result, "lora_adapter")
    assert adapter["device"].startswith("cuda:") and adapter["gpu_name"] == torch.cuda.get_device_name()
    assert adapter["precision"] == "bf16" and adapter["tokens_per_second"] > 0 and adapter["peak_memory_mb"] > 0
    assert "mfu_4n" not in adapter or 0 < adapter["mfu_4n"] < 1  # no datasheet peak for an unknown GPU
    assert result.dagster_run.run_id
    tags = corpus_lake_tags(result)
    assert tags["cpt/device"] == "cuda"
    report = materialization(result, "eval_report")
    assert str(report["device"]).startswith("cuda")


def corpus_lake_tags(result) -> dict[str, str]:
    run = result.instance.get_run_by_id(result.dagster_run.run_id)
    return dict(run.tags)
