"""The model asset checks' pure logic (lib.model_checks): pass and fail on values, with the figures they report."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from cpt_assets.lib.continual import GateInputs, promotion_decision
from cpt_assets.lib.evaluation import EvalReport, ModelScores
from cpt_assets.lib.gguf_export import GGUFExport, GGUFExportConfig, GGUFFile
from cpt_assets.lib.gguf_fidelity import QuantFidelity
from cpt_assets.lib.gguf_verify import Completion, Fidelity
from cpt_assets.lib.model_checks import (
    adapted_perplexity_lowered,
    gate_outcomes,
    gguf_outcomes,
    validation_loss_lowered,
    weights_changed,
)


@pytest.mark.parametrize(
    ("base", "final", "passed"),
    [(3.2, 3.0, True), (3.0, 3.0, False), (3.0, 3.1, False), (None, 3.0, False), (3.0, None, False),
     (3.0, math.nan, False), (math.inf, 3.0, False)],
)  # fmt: skip
def test_validation_loss_lowered(base, final, passed):
    ok, description, details = validation_loss_lowered(base, final, 20)
    assert ok is passed
    assert description.endswith("after 20 steps")
    assert details == {"validation_loss_base": base, "validation_loss_final": final}


def test_validation_loss_description_shows_both_losses():
    assert (
        validation_loss_lowered(3.157, 3.04, 20)[1] == "validation loss 3.157 (base) -> 3.04 (adapted) after 20 steps"
    )
    assert validation_loss_lowered(None, 3.04, 0)[1].startswith("validation loss none (base)")


def test_adapted_perplexity_lowered_carries_both_figures():
    report = EvalReport(base=ModelScores(loss=3.1, perplexity=22.57), adapted=ModelScores(loss=3.0, perplexity=20.26))
    ok, description, details = adapted_perplexity_lowered(report)
    assert ok and "20.2600 vs base 22.5700" in description
    assert details == {"base_perplexity": 22.57, "adapted_perplexity": 20.26}
    worse = dataclasses.replace(report, adapted=ModelScores(loss=3.2, perplexity=23.0))
    assert adapted_perplexity_lowered(worse)[0] is False


@pytest.mark.parametrize(("changed", "passed"), [(12, True), (0, False)])
def test_weights_changed(changed, passed):
    ok, description, details = weights_changed(changed, 0.0123 if changed else 0.0)
    assert ok is passed
    assert description.startswith(f"{changed} base tensors changed")
    assert details == {"changed_tensors": changed, "max_abs_delta": 0.0123 if changed else 0.0}


def _fidelity(file_type: str, **changes) -> Fidelity:
    fields = dict(path=Path(f"model-{file_type}.gguf"), file_type=file_type, loaded=True, error="", texts=3,
                  tokens_compared=400, tokenization_equal=True, first_mismatch="", blocks=8, scored_tokens=2040,
                  hf_perplexity=20.26, gguf_perplexity=20.26 * 1.002, relative_drift=0.002, mean_abs_nll_diff=0.01,
                  completions=(Completion("p", "a b", "a b"),), seconds=1.0)  # fmt: skip
    return Fidelity(**(fields | changes))  # type: ignore[arg-type]


def _quant(mean_kld: float, p99_kld: float = 0.2) -> QuantFidelity:
    return QuantFidelity(file="model-Q4_K_M.gguf", file_type="Q4_K_M", imatrix=True, bytes=105_460_000,
                         bits_per_weight=6.27, mean_kld=mean_kld, median_kld=mean_kld / 2, p99_kld=p99_kld,
                         max_kld=1.0, same_top_share=0.905, ppl=20.96, ppl_base=20.26, ppl_ratio=1.0346,
                         positions=4080, context=512, seconds=20.0)  # fmt: skip


def _export(fidelity: tuple[Fidelity, ...], quant: tuple[QuantFidelity, ...], reason: str = "") -> GGUFExport:
    files = tuple(
        GGUFFile(Path(f"model-{t}.gguf"), t, 100, "ab" * 32, 134_515_008, 6.0, {}, 1.0) for t in ("F16", "Q4_K_M")
    )
    return GGUFExport(folder=Path("."), files=files, fidelity=fidelity, quant_fidelity=quant, chosen_type="Q4_K_M",
                      choice_reason=reason, imatrix=None, modelfile=Path("Modelfile"), plot=None, provenance={},
                      hf_perplexity=20.26, reference_seconds=1.0)  # fmt: skip


def test_gguf_outcomes_pass_with_their_figures():
    outcomes = gguf_outcomes(_export((_fidelity("F16"), _fidelity("Q4_K_M")), (_quant(0.0286),)), GGUFExportConfig())
    assert all(passed for passed, _, _ in outcomes.values())
    assert outcomes["gguf_loads_in_llama_cpp"][2] == {"files_loaded": 2}
    assert outcomes["gguf_tokenization_matches_hf"][2] == {"tokens_compared": 800}
    assert outcomes["gguf_perplexity_within_bound"][2] == pytest.approx({"f16_drift_pct": 0.2, "q4_k_m_drift_pct": 0.2})
    assert outcomes["gguf_kld_within_bound"][2] == {"mean_kld": 0.0286, "p99_kld": 0.2, "same_top_share": 0.905}


@pytest.mark.parametrize(
    ("fidelity", "quant", "config", "failed"),
    [
        ((_fidelity("F16"), _fidelity("Q4_K_M", loaded=False, error="bad magic")), (_quant(0.03),), {},
         {"gguf_loads_in_llama_cpp", "gguf_tokenization_matches_hf", "gguf_perplexity_within_bound"}),
        ((_fidelity("F16", tokenization_equal=False, first_mismatch="text 0, token 3"), _fidelity("Q4_K_M")),
         (_quant(0.03),), {}, {"gguf_tokenization_matches_hf"}),
        ((_fidelity("F16", relative_drift=0.02), _fidelity("Q4_K_M")), (_quant(0.03),), {},
         {"gguf_perplexity_within_bound"}),
        ((_fidelity("F16"), _fidelity("Q4_K_M")), (_quant(0.09),), {}, {"gguf_kld_within_bound"}),
        ((_fidelity("F16"), _fidelity("Q4_K_M")), (_quant(0.03, p99_kld=0.5),), {"max_p99_kld": 0.3},
         {"gguf_kld_within_bound"}),
    ],
)  # fmt: skip
def test_gguf_outcomes_fail_where_the_file_does(fidelity, quant, config, failed):
    outcomes = gguf_outcomes(_export(fidelity, quant), GGUFExportConfig(**config))
    assert {name for name, (passed, _, _) in outcomes.items() if not passed} == failed


def test_gguf_kld_check_fails_with_the_choice_reason_when_no_type_was_measured():
    reason = "no candidate within mean KLD 0.05: Q4_K_M 0.09"
    outcomes = gguf_outcomes(_export((_fidelity("F16"), _fidelity("Q4_K_M")), (), reason), GGUFExportConfig())
    assert outcomes["gguf_kld_within_bound"] == (False, reason, {})


def test_gate_outcomes_follow_the_decision():
    inputs = GateInputs(
        candidate_domain_perplexity=19.3,
        promoted_domain_perplexity=20.3,
        base_control_perplexity=69.3,
        candidate_control_perplexity=75.0,
        gguf_checks_passed=True,
        gguf_checks_detail="all pass",
    )
    decision = promotion_decision(inputs, forgetting_bound=0.05)
    outcomes = gate_outcomes(decision, 0.05, "all pass")
    assert outcomes["candidate_beats_promoted"][0] is True
    passed, description, details = outcomes["candidate_within_forgetting_bound"]
    assert passed is False and description == "general-text perplexity +8.23% vs base (bound 5%)"
    assert details["control_change_pct"] == pytest.approx(100 * (75.0 / 69.3 - 1))
    assert outcomes["candidate_gguf_checks_pass"] == (True, "all pass", {})
