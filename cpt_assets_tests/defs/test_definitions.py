"""The code location loads, with the graph, jobs, pools, schedule and automation a user expects."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg

from cpt_assets.definitions import defs

GRAPH = [
    "raw_pdfs",
    "page_text",
    "clean_chunks",
    "corpus_splits",
    "base_model",
    "lora_adapter",
    "eval_report",
    "merged_model",
    "gguf_model",
    "control_text",
    "model_version",
]


def test_definitions_load_with_the_whole_graph_in_order():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(GRAPH)
    upstream = {
        "page_text": {"raw_pdfs"},
        "clean_chunks": {"page_text", "base_model"},  # chunks are sized in the base model's tokens
        "corpus_splits": {"clean_chunks"},
        "lora_adapter": {"corpus_splits", "base_model", "control_text"},
        "model_version": {"gguf_model", "eval_report", "control_text"},  # the gate reads eval_report's figures
        "eval_report": {"base_model", "corpus_splits", "lora_adapter", "control_text"},  # every asset it reads
        "merged_model": {"lora_adapter", "base_model"},
        "gguf_model": {"merged_model", "corpus_splits", "base_model", "lora_adapter", "eval_report"},
    }
    for asset, parents in upstream.items():
        assert {p.to_user_string() for p in graph.get(dg.AssetKey(asset)).parent_keys} == parents


def test_every_definition_in_the_defs_folder_is_loaded():
    """Definitions come from the defs folder, not a hand-kept list: whatever a module under cpt_assets/defs defines
    (asset, job, schedule, sensor) is in the code location, with the resources of defs/resources.py."""
    import importlib
    import pkgutil

    import cpt_assets.defs

    found: dict[str, set[str]] = {"assets": set(), "jobs": set(), "schedules": set(), "sensors": set()}
    for module_info in pkgutil.walk_packages(cpt_assets.defs.__path__, "cpt_assets.defs."):
        for value in vars(importlib.import_module(module_info.name)).values():
            if isinstance(value, dg.AssetsDefinition):
                found["assets"] |= {key.to_user_string() for key in value.keys}
            elif isinstance(value, dg.ScheduleDefinition):
                found["schedules"].add(value.name)
            elif isinstance(value, dg.SensorDefinition):
                found["sensors"].add(value.name)
            elif hasattr(value, "name") and type(value).__name__ == "UnresolvedAssetJobDefinition":
                found["jobs"].add(value.name)
    assert found["assets"] == set(GRAPH)
    repository = defs.get_repository_def()
    assert (
        {job.name for job in repository.get_all_jobs()}
        >= found["jobs"]
        == {
            "corpus_job",
            "splits_job",
            "model_job",
            "corpus_refresh_job",
        }
    )
    assert {s.name for s in repository.schedule_defs} == found["schedules"] == {"corpus_refresh_schedule"}
    assert {s.name for s in repository.sensor_defs} == found["sensors"] == {"corpus_automation", "model_automation"}
    assert set(repository.get_top_level_resources()) == {"lake", "sources"}


def test_gpu_steps_run_in_the_gpu_pool_with_no_import_time_device():
    for asset in ("lora_adapter", "eval_report"):
        node = defs.resolve_assets_def(asset).node_def
        assert node.pool == "gpu"
        assert node.tags["cpt/accelerator"] == "gpu"
        assert "cpt/device" not in node.tags  # decided when the step runs, as a run tag


def test_leakage_check_blocks_and_chunker_is_versioned():
    from cpt_assets.lib.chunking import CHUNKER_VERSION

    splits = defs.resolve_assets_def("corpus_splits")
    specs = {spec.name: spec for spec in splits.check_specs}
    assert specs["no_document_in_two_splits"].blocking
    assert not specs["split_ratios_within_tolerance"].blocking
    chunks = defs.resolve_assets_def("clean_chunks")
    assert chunks.code_versions_by_key[dg.AssetKey("clean_chunks")] == f"chunker-{CHUNKER_VERSION}"


def test_each_areas_checks_module_declares_its_checks_with_descriptions():
    """An asset's checks are the specs of its area's checks.py, each explained, the deciding ones blocking."""
    from cpt_assets.defs.corpus import checks as corpus
    from cpt_assets.defs.evaluation import checks as evaluation
    from cpt_assets.defs.export import checks as export
    from cpt_assets.defs.registry import checks as registry
    from cpt_assets.defs.training import checks as training

    declared = {
        "raw_pdfs": corpus.RAW_PDFS_CHECKS,
        "page_text": corpus.PAGE_TEXT_CHECKS,
        "clean_chunks": corpus.CLEAN_CHUNKS_CHECKS,
        "corpus_splits": corpus.SPLITS_CHECKS,
        "lora_adapter": training.ADAPTER_CHECKS,
        "eval_report": evaluation.EVAL_CHECKS,
        "merged_model": export.MERGE_CHECKS,
        "gguf_model": export.GGUF_CHECKS,
        "model_version": registry.GATE_CHECKS,
    }
    all_checks = {key.asset_key.to_user_string() for key in defs.resolve_asset_graph().asset_check_keys}
    assert all_checks == set(declared)  # no asset declares checks outside its area's module
    for asset, specs in declared.items():
        assert {spec.name for spec in defs.resolve_assets_def(asset).check_specs} == {spec.name for spec in specs}
        assert all(spec.description for spec in specs), asset
    assert all(spec.blocking for spec in registry.GATE_CHECKS)
    blocking = {spec.name for specs in declared.values() for spec in specs if spec.blocking}
    assert blocking == {"source_has_documents", "no_document_in_two_splits", *registry.GATE_CHECK_DESCRIPTIONS}


def test_launchpad_config_is_nested_described_and_offers_choices():
    from dagster._config.pythonic_config import infer_schema_from_config_class

    from cpt_assets.defs.corpus.assets import CleanChunksConfig
    from cpt_assets.defs.evaluation.assets import EvalRunConfig

    fields = infer_schema_from_config_class(CleanChunksConfig).config_type.fields
    assert {"cleaning", "quality", "dedup"} <= set(fields)
    assert fields["cleaning"].config_type.fields["edge_lines"].description.startswith("non-empty lines at the top")
    assert all(field.description for field in fields.values())
    eval_fields = infer_schema_from_config_class(EvalRunConfig).config_type.fields
    assert eval_fields["block_size"].description.startswith("tokens per packed block")
    corpus_node = defs.resolve_assets_def("page_text").node_def
    assert corpus_node.pool is None


def test_jobs_schedule_and_automation_are_defined():
    for job in ("corpus_job", "splits_job", "model_job", "corpus_refresh_job"):
        assert defs.resolve_job_def(job) is not None
    model_job = defs.resolve_job_def("model_job")
    assert {n.name for n in model_job.graph.node_defs} == {
        "control_text",
        "base_model",
        "lora_adapter",
        "eval_report",
        "merged_model",
        "gguf_model",
        "model_version",  # a main job ends in a promotion decision
    }
    schedule = defs.resolve_schedule_def("corpus_refresh_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    import datetime

    when = datetime.datetime(2026, 11, 24, 3, tzinfo=datetime.UTC)
    with dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def()) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert {r.partition_key for r in requests} == {"nist", "ietf"}
    assert {r.run_key for r in requests} == {"refresh-nist-2026-11-24", "refresh-ietf-2026-11-24"}
    assert defs.resolve_sensor_def("corpus_automation") is not None


def test_a_source_added_to_the_registry_becomes_a_partition(tmp_path):
    registry = tmp_path / "sources.yaml"
    registry.write_text(
        "sources:\n"
        "  - {name: nist, kind: pdf_folder, location: a}\n"
        "  - {name: ietf, kind: pdf_folder, location: b}\n"
        "  - {name: etsi, kind: url_list, location: etsi.csv}\n",
        encoding="utf-8",
    )
    script = (
        "import json; from cpt_assets.definitions import defs; "
        "print(json.dumps(defs.resolve_assets_def('raw_pdfs').partitions_def.get_partition_keys()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**__import__("os").environ, "CPT_SOURCES": str(registry)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["nist", "ietf", "etsi"]


def test_the_instance_config_gives_the_gpu_pool_one_slot(tmp_path):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parents[2] / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        config = instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1
    assert config.run_queue_config.max_concurrent_runs == 4


def test_loading_the_definitions_imports_no_model_or_nlp_library():
    """Every Dagster process (code servers, run and step workers) imports the definitions first: torch, transformers,
    llama.cpp and nltk (whose package pulls in scipy.stats and sklearn) are imported by the steps that use them."""
    heavy = ["torch", "transformers", "peft", "llama_cpp", "nltk", "sklearn", "matplotlib"]
    program = f"import sys, cpt_assets.definitions; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
