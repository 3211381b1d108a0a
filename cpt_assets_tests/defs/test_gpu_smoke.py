"""The GPU steps materialised through Dagster on CUDA (run on the device machine: `pytest -m gpu`).

Proves what CI cannot: lora_adapter and eval_report, as a user materialises them, train and score on the GPU and say
so in their metadata and run tags. Tiny Llama on the real tokenizer, so it takes seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.evaluation.assets import eval_report
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets_tests.defs.conftest import CORPUS_ASSETS, IETF_GOOD, NIST_GOOD, CorpusLake, materialization
from cpt_assets_tests.defs.test_model_assets import TINY_EVAL, TINY_TRAINING

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

# The CUDA profile (block 2048, ...) would not fit the tiny test corpus: keep the tiny shape on the GPU too.
TINY_CUDA = {**TINY_TRAINING, "cuda_block_size": 64, "cuda_batch_size": 2, "cuda_learning_rate": 1e-3}
# Loss and perplexity only (no continuations): the device machine carries no embedding model for their metrics.
TINY_CUDA_EVAL = {**TINY_EVAL, "max_samples": 0}


def gpu_lake(tmp_path: Path, corpus_dir: Path, tiny_model_dir: Path) -> CorpusLake:
    """Two sources of real PDFs (local folders), chunked with the base_model asset's tokenizer (the tiny model's copy
    of the real SmolLM2 tokenizer, materialised first), split, plus control_text: what training reads."""
    folders = {"ietf": (corpus_dir / "ietf", IETF_GOOD), "nist": (corpus_dir / "nist", NIST_GOOD)}
    lines = ["sources:"]
    for source, (origin, names) in folders.items():
        (tmp_path / source).mkdir()
        for name in names:
            shutil.copy(origin / name, tmp_path / source / name)
        lines += [f"  - name: {source}", "    kind: pdf_folder", f"    location: {tmp_path / source}"]
    registry = tmp_path / "sources.yaml"
    registry.write_text("\n".join(lines) + "\n", encoding="utf-8")
    resources = {"lake": LakeResource(root=str(tmp_path / "lake")), "sources": SourcesResource(registry=str(registry))}
    lake = CorpusLake(tmp_path / "lake", registry, tmp_path / "ietf", resources, {}, dg.DagsterInstance.ephemeral())
    base = {"ops": {"base_model": {"config": {"source": str(tiny_model_dir)}}}}
    assert lake.materialize([base_model], run_config=base).success
    for source in folders:
        assert lake.materialize(CORPUS_ASSETS, partition_key=source).success
    assert lake.materialize([corpus_splits, control_text]).success
    return lake


def train_and_evaluate(lake: CorpusLake, training: dict, evaluation: dict) -> dg.ExecuteInProcessResult:
    return lake.materialize(
        [lora_adapter, eval_report],
        run_config={"ops": {"lora_adapter": {"config": training}, "eval_report": {"config": evaluation}}},
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lora_adapter_and_eval_report_run_on_cuda(tmp_path, corpus_dir, tiny_model_dir):
    lake = gpu_lake(tmp_path, corpus_dir, tiny_model_dir)
    result = train_and_evaluate(lake, TINY_CUDA, TINY_CUDA_EVAL)
    assert result.success
    adapter = materialization(result, "lora_adapter")
    assert adapter["device"].startswith("cuda:") and adapter["gpu_name"] == torch.cuda.get_device_name()
    assert adapter["precision"] == "bf16" and adapter["tokens_per_second"] > 0 and adapter["peak_memory_mb"] > 0
    assert "mfu_4n" not in adapter or 0 < adapter["mfu_4n"] < 1  # no datasheet peak for an unknown GPU
    assert result.dagster_run.run_id
    run = lake.instance.get_run_by_id(result.dagster_run.run_id)
    assert run is not None and run.tags["cpt/device"] == "cuda"
    report = materialization(result, "eval_report")
    assert str(report["device"]).startswith("cuda")
    assert report["adapted_perplexity"] > 0 and report["control_adapted_perplexity"] > 0
