"""The model registry: every training run's result as a version, and the promoted model at a stable path.

Versions live in one parquet file under data_lake/registry/ (the DuckDB view `model_versions`), written atomically
by the one asset that registers versions, so it never contends with the catalog's writer. Each version keeps its
own copy of adapter and GGUF, so a promoted adapter stays available to continue from after the working folders
are overwritten. Promotion copies the candidate's GGUF and Modelfile into data_lake/promoted/ (what a user's
Ollama points at), moving the files it replaces to data_lake/promoted_previous/; a rejected candidate touches
neither.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cpt_assets.lib.lake import (
    MODELFILE,
    PROMOTED_GGUF,
    VERSION_ADAPTER,
    Lake,
    atomic_path,
    read_records,
    write_records,
)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registry row."""

    version: str  # v1, v2, ...
    parent: str  # version continued from, "" for a fresh start from the base
    created_at: str  # ISO time of registration
    run_id: str  # the Dagster run that registered it
    split_hashes: str  # JSON: split -> content hash the version was trained and tested on
    config_hash: str  # training config hash
    base_sha256: str  # base model weights the adapter belongs to
    domain_perplexity: float  # on the current test split at registration
    promoted_domain_perplexity: float | None  # the promoted version's, on the same test split (None: none promoted)
    base_control_perplexity: float  # general text, base model
    control_perplexity: float  # general text, this version
    gguf_fidelity: str  # JSON: per file type, GGUF vs HF figures from the export
    gguf_sha256: str  # the file a promotion would serve
    decision: str  # "promoted" or "rejected"
    reason: str


def read_versions(lake: Lake) -> list[ModelVersion]:
    return read_records(lake.versions_path, ModelVersion)


def next_version_id(versions: list[ModelVersion]) -> str:
    return f"v{max((int(v.version[1:]) for v in versions), default=0) + 1}"


def promoted_version(versions: list[ModelVersion]) -> ModelVersion | None:
    """The latest promoted version, or None."""
    promoted = [v for v in versions if v.decision == "promoted"]
    return promoted[-1] if promoted else None


def append_version(lake: Lake, version: ModelVersion) -> list[ModelVersion]:
    """Add a row (atomically rewriting the small table); an existing id raises ValueError."""
    versions = read_versions(lake)
    if any(v.version == version.version for v in versions):
        raise ValueError(f"registry already has a version {version.version!r}")
    versions.append(version)
    write_records(versions, ModelVersion, lake.versions_path)
    return versions


def keep_version_files(lake: Lake, version: str, adapter_dir: Path, gguf_path: Path, modelfile: Path) -> Path:
    """Copy the version's adapter, GGUF and Modelfile into its own registry folder (atomically)."""
    target = lake.registry_version_dir(version)
    with atomic_path(target) as tmp:
        shutil.copytree(adapter_dir, tmp / VERSION_ADAPTER)
        shutil.copy2(gguf_path, tmp / PROMOTED_GGUF)
        text = modelfile.read_text().replace(f"FROM ./{gguf_path.name}", f"FROM ./{PROMOTED_GGUF}")
        (tmp / MODELFILE).write_text(text)
    return target


def promote(lake: Lake, version: str) -> Path:
    """Make a kept version the served one: the current promoted files move to promoted_previous/ first."""
    source = lake.registry_version_dir(version)
    if not (source / PROMOTED_GGUF).is_file():
        raise FileNotFoundError(f"version {version} has no GGUF at {source / PROMOTED_GGUF}")
    if (lake.promoted_dir / PROMOTED_GGUF).is_file():
        with atomic_path(lake.previous_promoted_dir) as tmp:
            shutil.copytree(lake.promoted_dir, tmp)
    with atomic_path(lake.promoted_dir) as tmp:
        tmp.mkdir(parents=True)
        shutil.copy2(source / PROMOTED_GGUF, tmp / PROMOTED_GGUF)
        shutil.copy2(source / MODELFILE, tmp / MODELFILE)
        (tmp / "VERSION").write_text(version + "\n")
    return lake.promoted_dir / PROMOTED_GGUF


def version_rows(versions: list[ModelVersion]) -> list[dict]:
    """Rows for a metadata table (long JSON fields left out)."""
    keep = ("version", "parent", "domain_perplexity", "promoted_domain_perplexity", "base_control_perplexity")
    keep += ("control_perplexity", "decision", "reason", "config_hash", "gguf_sha256")
    return [
        {k: asdict(v)[k] for k in keep} | {"test_ppl": v.domain_perplexity, "general": v.control_perplexity}
        for v in versions
    ]


def plot_versions(versions: list[ModelVersion], path: Path) -> Path:
    """Domain and general-text perplexity per version, promoted ones filled, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    names = [v.version for v in versions]
    for axis, values, title in (
        (left, [v.domain_perplexity for v in versions], "domain test perplexity"),
        (right, [v.control_perplexity for v in versions], "general-text perplexity"),
    ):
        colours = ["tab:green" if v.decision == "promoted" else "tab:red" for v in versions]
        axis.bar(names, values, color=colours)
        axis.set_title(title)
        axis.grid(alpha=0.3, axis="y")
    if versions:
        right.axhline(versions[-1].base_control_perplexity, color="grey", ls="--", lw=1, label="base")
        right.legend()
    figure.suptitle("model versions (green: promoted, red: rejected)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
