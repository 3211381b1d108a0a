"""The export area's asset checks (merged_model, gguf_model): specs and results from `lib.model_checks`."""

import dagster as dg

from cpt_assets.defs.metadata import outcome_result
from cpt_assets.lib.gguf_export import GGUFExport, GGUFExportConfig
from cpt_assets.lib.merge import MergeResult
from cpt_assets.lib.model_checks import gguf_outcomes, weights_changed

MERGE_CHECKS = [
    dg.AssetCheckSpec(
        "merge_changed_weights",
        asset="merged_model",
        description="merging the adapter changed at least one base tensor (an adapter that changes nothing is "
        "a training or merge fault)",
    )
]
GGUF_CHECK_DESCRIPTIONS = {
    "gguf_loads_in_llama_cpp": "every GGUF file (F16 and each quantization) loads in llama.cpp",
    "gguf_tokenization_matches_hf": "llama.cpp tokenizes the test texts into exactly the token ids the HF tokenizer "
    "gives (a wrong pre-tokenizer loads but babbles)",
    "gguf_perplexity_within_bound": "each GGUF's perplexity on test blocks is within its file type's bound of the "
    "merged HF model's (see the tolerance knobs)",
    "gguf_kld_within_bound": "the chosen quantization's mean and p99 KL divergence from the F16 logits on the test "
    "split (llama-perplexity --kl-divergence) are within max_mean_kld and max_p99_kld",
}
GGUF_CHECKS = [
    dg.AssetCheckSpec(name, asset="gguf_model", description=about) for name, about in GGUF_CHECK_DESCRIPTIONS.items()
]


def merge_results(result: MergeResult) -> list[dg.AssetCheckResult]:
    outcome = weights_changed(result.changed_tensors, float(result.max_abs_delta))
    return [outcome_result("merge_changed_weights", outcome)]


def gguf_results(export: GGUFExport, config: GGUFExportConfig) -> list[dg.AssetCheckResult]:
    outcomes = gguf_outcomes(export, config)
    return [outcome_result(name, outcomes[name]) for name in GGUF_CHECK_DESCRIPTIONS]
