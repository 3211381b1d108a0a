"""Continual pretraining end to end on a tiny Llama (real tokenizer, real PDFs, real llama.cpp, real DuckDB):
version 1 trained and promoted; a document added to a source and refreshed; automation asks for training and a
continued version whose parent is v1 gets a recorded decision; a candidate trained with a learning rate far too
high overflows half precision, the export refuses its NaN F16 GGUF and nothing is registered or served; a
candidate whose GGUF misses its fidelity bound is rejected and the promoted GGUF stays byte-for-byte the old one;
a refresh that changes nothing trains nothing (dagster's own automation-condition evaluation)."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from cpt_assets.defs.corpus.assets import clean_chunks, page_text, raw_pdfs
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.evaluation.assets import eval_report
from cpt_assets.defs.export.assets import gguf_model, merged_model
from cpt_assets.defs.registry.assets import model_version
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model
from cpt_assets.lib.lake import Lake
from cpt_assets.lib.registry import read_versions
from cpt_assets_tests.defs.conftest import failure_message, materialization
from cpt_assets_tests.defs.test_model_assets import TINY_EVAL, TINY_GGUF, TINY_TRAINING

CORPUS = [raw_pdfs, page_text, clean_chunks]
MODEL = [control_text, base_model, lora_adapter, eval_report, merged_model, gguf_model, model_version]
ALL = [*CORPUS, corpus_splits, *MODEL]
GATE = {"device": "cpu"}


def model_config(tiny_model_dir, with_base: bool = True, gguf: dict | None = None, **training) -> dict:
    """Run config of the model stages; with_base=False for a run that keeps the materialised base model."""
    ops = {
        "lora_adapter": {"config": {**TINY_TRAINING, **training}},
        "eval_report": {"config": TINY_EVAL},
        "gguf_model": {"config": {**TINY_GGUF, **(gguf or {})}},
        "model_version": {"config": GATE},
    }
    if with_base:
        ops["base_model"] = {"config": {"source": str(tiny_model_dir)}}
    return {"ops": ops}


@pytest.mark.slow
def test_refresh_continues_from_the_promoted_version_and_the_gate_guards_the_served_file(
    tmp_path, corpus_dir, tiny_model_dir
):
    folders = {"ietf": tmp_path / "ietf", "nist": tmp_path / "nist"}
    files = {"ietf": ["rfc2119.txt.pdf", "rfc8174.txt.pdf", "rfc8259.txt.pdf", "rfc7519.txt.pdf"]}
    files["nist"] = ["FIPS199.pdf", "SP800-145.pdf"]
    for source, names in files.items():
        folders[source].mkdir()
        for name in names:
            shutil.copy(corpus_dir / source / name, folders[source] / name)
    registry = tmp_path / "sources.yaml"
    registry.write_text(
        "sources:\n" + "".join(f"  - name: {s}\n    kind: pdf_folder\n    location: {folders[s]}\n" for s in folders),
        encoding="utf-8",
    )
    resources = {"lake": LakeResource(root=str(tmp_path / "lake")), "sources": SourcesResource(registry=str(registry))}
    instance = dg.DagsterInstance.ephemeral()
    lake = Lake(tmp_path / "lake")

    def run(assets, **kwargs):
        return dg.materialize(assets, resources=resources, instance=instance, **kwargs)

    def refresh():
        for source in folders:
            assert run(CORPUS, partition_key=source).success
        assert run([corpus_splits]).success

    cursor = None

    def tick() -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(
            defs=dg.Definitions(assets=ALL, resources=resources), instance=instance, cursor=cursor
        )
        cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if r.true_subset.size > 0}

    refresh()
    first = run(MODEL, run_config=model_config(tiny_model_dir))
    assert first.success
    v1 = materialization(first, "model_version")
    assert v1["version"] == "v1" and v1["parent_version"] == "none" and v1["decision"] == "promoted", v1["reason"]
    assert materialization(first, "lora_adapter")["start_reason"].startswith("no promoted version")
    served = (lake.promoted_dir / "model.gguf").read_bytes()
    tick()  # the first evaluation records where things stand

    shutil.copy(corpus_dir / "nist" / "srx-server-protocol-3.0.pdf", folders["nist"] / "srx.pdf")
    refresh()
    assert "lora_adapter" in tick()  # the splits' data version changed: training is requested
    second = run(MODEL[2:], run_config=model_config(tiny_model_dir, with_base=False), raise_on_error=False)
    adapter = materialization(second, "lora_adapter")
    assert adapter["parent_version"] == "v1" and adapter["tokens_general"] > 0
    v2 = materialization(second, "model_version")
    assert v2["version"] == "v2" and v2["parent_version"] == "v1" and v2["decision"] in ("promoted", "rejected")
    assert v2["reason"]

    promoted_before = [v for v in read_versions(lake) if v.decision == "promoted"][-1].version
    served_before = lake.promoted_gguf_path.read_bytes()

    # A learning rate far too high: the weights overflow half precision, the export refuses them, nothing is served.
    diverged = run(
        MODEL[2:], run_config=model_config(tiny_model_dir, with_base=False, learning_rate=5.0), raise_on_error=False
    )
    assert not diverged.success
    assert "non-finite log-probabilities" in failure_message(diverged)  # ours, not llama.cpp's (its log can be lost)
    assert len(read_versions(lake)) == 2 and lake.promoted_gguf_path.read_bytes() == served_before

    # A candidate whose GGUF misses its fidelity bound: registered, rejected, the promoted file untouched.
    strict = {"max_mean_kld": 1e-9, "modelfile_type": "Q8_0"}
    bad = run(MODEL[2:], run_config=model_config(tiny_model_dir, with_base=False, gguf=strict), raise_on_error=False)
    v3 = materialization(bad, "model_version")
    assert v3["decision"] == "rejected", v3["reason"]
    assert "GGUF" in v3["reason"]
    assert v3["promoted_version"] == promoted_before
    if promoted_before == "v1":
        assert (lake.promoted_dir / "model.gguf").read_bytes() == served
    assert (lake.promoted_dir / "model.gguf").read_bytes() == (
        lake.registry_version_dir(promoted_before) / "model.gguf"
    ).read_bytes()
    checks = {e.check_name: e.passed for e in bad.get_asset_check_evaluations()}
    assert checks["gguf_kld_within_bound"] is False and checks["candidate_gguf_checks_pass"] is False
    rows = lake.connect().execute("SELECT version, parent, decision FROM model_versions ORDER BY version").fetchall()
    assert [r[0] for r in rows] == ["v1", "v2", "v3"] and rows[1][1] == "v1"

    tick()
    refresh()  # nothing changed in any source
    assert "lora_adapter" not in tick()
