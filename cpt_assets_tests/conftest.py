"""Shared fixtures: the real corpus mirror, the real SmolLM2 tokenizer and a tiny Llama built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real PDFs (../shared/corpus), or the folder CPT_CORPUS names."""
    path = Path(os.environ.get("CPT_CORPUS", DEFAULT_CORPUS)).resolve()
    if not (path / "MANIFEST.tsv").exists():
        pytest.fail(
            f"The corpus mirror was not found at {path}: these tests need the real PDFs. "
            "Set CPT_CORPUS to the folder holding MANIFEST.tsv and nist/, ietf/, edge/, scale/ "
            "(in this workplace: ../shared/corpus beside the repository)."
        )
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from cpt_assets.lib.base_model import default_tokenizer_dir

    return default_tokenizer_dir()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from cpt_assets.lib.base_model import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from cpt_assets.lib.base_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_dir=tokenizer_dir)
