"""The one Definitions object of the code location (workspace.yaml and `dagster dev` load this module)."""

from __future__ import annotations

import dagster as dg

from cpt_assets.defs.automation import model_automation_sensor
from cpt_assets.defs.corpus.assets import clean_chunks, page_text, raw_pdfs
from cpt_assets.defs.corpus.schedules import corpus_automation_sensor, corpus_refresh_schedule
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.evaluation.assets import eval_report
from cpt_assets.defs.export.assets import gguf_model, merged_model
from cpt_assets.defs.jobs import corpus_job, model_job, refresh_job, splits_job
from cpt_assets.defs.registry.assets import model_version
from cpt_assets.defs.registry.control import control_text
from cpt_assets.defs.resources import LakeResource, SourcesResource
from cpt_assets.defs.training.adapter import lora_adapter
from cpt_assets.defs.training.base import base_model

defs = dg.Definitions(
    assets=[
        raw_pdfs,
        page_text,
        clean_chunks,
        corpus_splits,
        base_model,
        lora_adapter,
        eval_report,
        merged_model,
        gguf_model,
        control_text,
        model_version,
    ],
    jobs=[corpus_job, splits_job, model_job, refresh_job],
    schedules=[corpus_refresh_schedule],
    sensors=[corpus_automation_sensor, model_automation_sensor],
    resources={"lake": LakeResource(), "sources": SourcesResource()},
)
