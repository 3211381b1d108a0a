"""Replay mix, continuation plan, promotion gate, control text and registry: pure functions on literal inputs,
the control text from the installed Debian package, the registry on a temporary lake."""

from __future__ import annotations

import json

import pytest

from cpt_assets.lib.continual import (
    ContinualConfig,
    GateConfig,
    GateInputs,
    plan_continuation,
    promotion_decision,
    replay_mix,
)
from cpt_assets.lib.control_text import ControlTextConfig, load_control_documents, read_cookies, texts_of
from cpt_assets.lib.lake import Lake
from cpt_assets.lib.registry import (
    ModelVersion,
    append_version,
    keep_version_files,
    next_version_id,
    plot_versions,
    promote,
    promoted_version,
    read_versions,
)

SHAPE = {"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize(
    ("field", "value"),
    [("general_replay_share", 1.0), ("general_replay_share", -0.1), ("earlier_replay_share", 1.5)],
)
def test_replay_share_outside_unit_interval_names_the_setting(field, value):
    with pytest.raises(ValueError, match=f"ContinualConfig.{field} must be in \\[0, 1\\)"):
        ContinualConfig(**{field: value}).validate()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forgetting_bound": -0.01}, "GateConfig.forgetting_bound must be >= 0"),
        ({"device": "gpu"}, "GateConfig.device"),
    ],
)
def test_gate_settings_are_validated_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GateConfig(**kwargs)


def test_replay_mix_reaches_the_configured_shares_and_reports_tokens():
    new = {"n1": ["word " * 900]}
    earlier = {f"e{i}": ["word " * 50] for i in range(20)}
    general = {f"g{i}": ["word " * 10] for i in range(50)}
    mix = replay_mix(new, earlier, general, ContinualConfig(general_replay_share=0.05, earlier_replay_share=0.2))
    total = 900 / 0.75
    assert mix.tokens["new"] == 900
    assert round(total * 0.2) <= mix.tokens["earlier"] < round(total * 0.2) + 50
    assert round(total * 0.05) <= mix.tokens["general"] < round(total * 0.05) + 10
    assert set(mix.documents) == set(mix.parts["new"]) | set(mix.parts["earlier"]) | {
        f"general:{d}" for d in mix.parts["general"]
    }
    assert [row["part"] for row in mix.table()] == ["new", "earlier", "general"]


def test_fresh_start_replays_no_earlier_documents():
    mix = replay_mix({"n": ["a b c d"]}, {}, {"g": ["x y"]}, ContinualConfig(general_replay_share=0.0))
    assert mix.parts == {"new": ["n"], "earlier": [], "general": []}


def _adapter(tmp_path, **shape):
    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({**SHAPE, **shape}))
    return folder


@pytest.mark.parametrize(
    ("promoted_base", "shape", "expected_parent", "reason"),
    [
        ("aaa", {}, "v1", "continuing from promoted version v1"),
        ("bbb", {}, None, "another base model"),
        ("aaa", {"r": 16}, None, "another LoRA shape (r:"),
    ],
)
def test_continuation_needs_same_base_and_lora_shape(tmp_path, promoted_base, shape, expected_parent, reason):
    adapter = _adapter(tmp_path, **shape)
    plan = plan_continuation("v1", adapter, promoted_base, "aaa", SHAPE, True, ContinualConfig())
    assert plan.parent_version == expected_parent
    assert reason in plan.reason


def test_no_promoted_version_starts_from_the_base():
    plan = plan_continuation(None, None, None, "aaa", SHAPE, True, ContinualConfig())
    assert plan.parent_version is None and "no promoted version" in plan.reason


@pytest.mark.parametrize(
    ("candidate", "promoted", "control", "gguf", "promote", "why"),
    [
        (10.0, None, 20.5, True, True, "first version"),
        (9.0, 10.0, 20.9, True, True, "beats the promoted"),
        (11.0, 10.0, 20.0, True, False, "does not beat the promoted"),
        (9.0, 10.0, 21.2, True, False, "beyond the 5% bound"),
        (9.0, 10.0, 20.0, False, False, "GGUF checks failed"),
        (float("nan"), None, 20.0, True, False, "not finite"),
    ],
)
def test_promotion_gate(candidate, promoted, control, gguf, promote, why):
    decision = promotion_decision(GateInputs(candidate, promoted, 20.0, control, gguf), forgetting_bound=0.05)
    assert decision.promote is promote
    assert why in decision.reason
    assert decision.control_change == pytest.approx(control / 20.0 - 1)


def test_control_text_from_the_fortunes_package_is_general_english_split_stably():
    documents = load_control_documents()
    replay, control = texts_of(documents, "replay"), texts_of(documents, "control")
    assert not set(replay) & set(control)
    words = sum(len(d.text.split()) for d in documents)
    assert words > 200_000  # a few hundred thousand tokens
    assert 0.4 < len(control) / len(documents) < 0.6
    assert [d.part for d in load_control_documents()] == [d.part for d in documents]


def test_missing_control_set_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="ControlTextConfig.directory .* fortunes"):
        load_control_documents(ControlTextConfig(directory=str(tmp_path / "none")))


def test_cookies_are_split_on_percent_lines(tmp_path):
    (tmp_path / "f").write_text("one\ntwo\n%\nthree\n%\n")
    assert read_cookies(tmp_path / "f") == ["one\ntwo", "three"]


def _version(version: str, decision: str, parent: str = "") -> ModelVersion:
    return ModelVersion(version, parent, "t", "r", "{}", "c", "b", 10.0, None, 20.0, 20.5, "{}", "s", decision, "x")


def test_registry_keeps_versions_and_promotion_keeps_the_previous_file(tmp_path):
    lake = Lake(tmp_path / "lake")
    adapter = _adapter(tmp_path)
    for version, payload in (("v1", b"first"), ("v2", b"second")):
        gguf = tmp_path / f"model-{version}.gguf"
        gguf.write_bytes(payload)
        (tmp_path / "Modelfile").write_text(f"FROM ./{gguf.name}\n")
        keep_version_files(lake, version, adapter, gguf, tmp_path / "Modelfile")
    append_version(lake, _version("v1", "promoted"))
    promote(lake, "v1")
    append_version(lake, _version("v2", "rejected", parent="v1"))
    assert (lake.promoted_dir / "model.gguf").read_bytes() == b"first"
    assert "FROM ./model.gguf" in (lake.promoted_dir / "Modelfile").read_text()
    promote(lake, "v2")
    assert (lake.promoted_dir / "model.gguf").read_bytes() == b"second"
    assert (lake.previous_promoted_dir / "model.gguf").read_bytes() == b"first"
    versions = read_versions(lake)
    assert [v.version for v in versions] == ["v1", "v2"] and versions[1].parent == "v1"
    assert promoted_version(versions).version == "v1" and next_version_id(versions) == "v3"
    with pytest.raises(ValueError, match="already has a version 'v1'"):
        append_version(lake, _version("v1", "rejected"))
    assert lake.connect().execute("SELECT count(*) FROM model_versions").fetchone()[0] == 2
    assert plot_versions(versions, lake.registry_chart_path).read_bytes()[:4] == b"\x89PNG"
