"""Jobs the CLI and schedules launch. Users can also materialise any selection from the UI."""

import dagster as dg

# A corpus run whose process died (killed, out of memory) is retried once by the daemon (dagster.yaml run_retries).
# A failed step is not: its errors are about the source (a missing folder, no PDFs), which a rerun does not fix, and
# transient download errors are already retried per document inside raw_pdfs.
CORPUS_RUN_TAGS = {"dagster/max_retries": "1", "dagster/retry_on_asset_or_op_failure": "false"}

CORPUS_JOB = "corpus_job"
SPLITS_JOB = "splits_job"
MODEL_JOB = "model_job"

CORPUS_ASSETS = dg.AssetSelection.assets("raw_pdfs", "page_text", "clean_chunks")
# The registry group: control_text (general English, read by training's replay and the forgetting control) and
# model_version (the promotion gate), so a main job ends in a recorded, promoted (or rejected) version.
MODEL_ASSETS = dg.AssetSelection.groups("model", "evaluation", "export", "registry")

corpus_job = dg.define_asset_job(
    CORPUS_JOB,
    selection=CORPUS_ASSETS,
    tags=CORPUS_RUN_TAGS,
    description="One source partition: fetch its PDFs, extract page text, clean and chunk.",
)
splits_job = dg.define_asset_job(
    SPLITS_JOB,
    selection=dg.AssetSelection.assets("corpus_splits"),
    description="Train/validation/test splits over every source's chunks.",
)
model_job = dg.define_asset_job(
    MODEL_JOB,
    selection=MODEL_ASSETS,
    description="Base model and control text -> LoRA adapter -> evaluation report -> merged model -> GGUF -> "
    "model version (promotion gate).",
)
refresh_job = dg.define_asset_job(
    "corpus_refresh_job",
    selection=dg.AssetSelection.assets("raw_pdfs"),
    description="Re-fetch one source; downstream corpus assets follow through their automation conditions.",
)
