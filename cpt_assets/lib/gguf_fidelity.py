"""How much a quantized GGUF loses, measured the way llama.cpp measures it, and the type chosen by those figures.

llama.cpp judges a quantization by the KL divergence of its next-token distribution from the F16 model's, position
by position, and the share of positions where both pick the same top token (`llama-perplexity --kl-divergence-base`
then `--kl-divergence`; its published Llama-3-8B scoreboard: Q4_K_M mean KLD 0.031 with 91.9% same top token, Q8_0
0.0014 and 97.7%). Perplexity alone can average errors away; KLD cannot. We run llama.cpp's own tool rather than
computing it from llama-cpp-python logits: it is the definition behind the published figures, it stores the F16
log-probabilities once and compares every file against them, and it needs no Python loop over 49k-wide rows.

A domain importance matrix (`llama-imatrix` on train-split text) tells the quantizer which weight columns matter for
this domain; `llama-quantize --imatrix` uses it. An imatrix made for another model is refused before quantizing.

The choice of type: the smallest file whose mean KLD is within the bound (and p99 within its bound when given);
the row says why. The check functions at the end are pure, so the asset checks only wrap them.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpt_assets.lib.lake import sha256_file
from cpt_assets.lib.llama_tools import LlamaCpp, run_tool

log = logging.getLogger(__name__)

MIN_KLD_CONTEXT = 128  # smallest llama-perplexity context tried for short texts (2 chunks give >= 100 positions)
TEXT_SEPARATOR = "\n\n"  # between documents in the text files the tools read


@dataclass(frozen=True, slots=True)
class Imatrix:
    """An importance matrix computed by llama-imatrix."""

    path: Path
    sha256: str
    chunks: int  # chunks of `context` tokens it was computed on
    context: int
    entries: int  # weight tensors it covers
    seconds: float


@dataclass(frozen=True, slots=True)
class QuantFidelity:
    """One quantized file against the F16 file, as llama-perplexity --kl-divergence reports it."""

    file: str  # file name
    file_type: str  # "Q4_K_M", ...
    imatrix: bool  # quantized with the domain importance matrix
    bytes: int
    bits_per_weight: float
    mean_kld: float
    median_kld: float
    p99_kld: float
    max_kld: float
    same_top_share: float  # share of positions where the top token equals the F16 file's (0..1)
    ppl: float  # perplexity of this file on the scored positions
    ppl_base: float  # the F16 file's perplexity on the same positions
    ppl_ratio: float  # ppl / ppl_base
    positions: int  # scored positions (chunks x (context - 1 - context/2))
    context: int
    seconds: float  # the KLD run

    def row(self) -> dict[str, object]:
        return {
            "type": self.file_type,
            "imatrix": self.imatrix,
            "mb": round(self.bytes / 1e6, 2),
            "bits_per_weight": round(self.bits_per_weight, 3),
            "mean_kld": round(self.mean_kld, 6),
            "median_kld": round(self.median_kld, 6),
            "p99_kld": round(self.p99_kld, 6),
            "same_top_pct": round(100 * self.same_top_share, 2),
            "ppl_ratio": round(self.ppl_ratio, 5),
            "positions": self.positions,
        }


def write_text(texts: Sequence[str], path: Path) -> Path:
    """The texts as one UTF-8 file for llama.cpp's tools (documents separated by a blank line)."""
    path.write_text(TEXT_SEPARATOR.join(t.strip() for t in texts if t.strip()), encoding="utf-8")
    return path


def chunk_plan(total_tokens: int, context: int, max_tokens: int) -> tuple[int, int]:
    """(context, chunks) for llama-perplexity/llama-imatrix over `total_tokens`, at most `max_tokens` of them.

    llama-perplexity needs at least 2 x context tokens: shorter texts get a smaller context (a power of two, at least
    MIN_KLD_CONTEXT). ValueError when even that does not fit.
    """
    while context > MIN_KLD_CONTEXT and total_tokens < 2 * context:
        context //= 2
    if total_tokens < 2 * context:
        raise ValueError(
            f"{total_tokens} tokens of text are too few for llama-perplexity (needs {2 * MIN_KLD_CONTEXT})"
        )
    return context, max(2, min(total_tokens // context, max_tokens // context))


# llama.cpp 0.3.36's AMX repacked-weight path crashes (SIGSEGV in ggml_backend_amx_mul_mat) on quantized files on
# CPUs with AMX (these machines); --no-repack keeps the plain CPU kernels, which compute the same values.
NO_REPACK = "--no-repack"


def _threads(threads: int | None) -> str:
    return str(threads or os.cpu_count() or 1)


def compute_imatrix(
    f16_path: Path,
    text_file: Path,
    out_path: Path,
    sources: LlamaCpp,
    context: int,
    chunks: int,
    threads: int | None = None,
) -> Imatrix:
    """llama-imatrix over `chunks` chunks of `context` tokens of `text_file`, written (GGUF format) to out_path."""
    started = time.perf_counter()
    command = [sources.tool("llama-imatrix"), "-m", f16_path, "-f", text_file, "-o", out_path]
    command += ["-c", str(context), "--chunks", str(chunks), "-t", _threads(threads), "--no-ppl", NO_REPACK]
    run_tool(command)
    entries = len(_imatrix_columns(out_path))
    return Imatrix(out_path, sha256_file(out_path), chunks, context, entries, time.perf_counter() - started)


def _imatrix_columns(imatrix: Path) -> dict[str, int]:
    """Weight name -> input columns, from an imatrix GGUF (`<weight>.in_sum2` tensors)."""
    import gguf

    if Path(imatrix).read_bytes()[:4] != b"GGUF":
        raise ValueError(f"{imatrix} is not an imatrix in GGUF format (llama-imatrix's default output)")
    reader = gguf.GGUFReader(str(imatrix))
    suffix = ".in_sum2"
    return {t.name.removesuffix(suffix): int(t.shape[0]) for t in reader.tensors if t.name.endswith(suffix)}


def check_imatrix(imatrix: Path, model_gguf: Path) -> None:
    """ValueError unless the imatrix was computed for this model's weights (same names, same input widths)."""
    import gguf

    imatrix, model_gguf = Path(imatrix), Path(model_gguf)
    if not imatrix.exists():
        raise FileNotFoundError(f"imatrix {imatrix} does not exist")
    columns = _imatrix_columns(imatrix)
    weights = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(str(model_gguf)).tensors if len(t.shape) >= 2}
    missing = sorted(set(columns) - set(weights))
    wrong = sorted(f"{n}: {c} vs {weights[n]}" for n, c in columns.items() if n in weights and weights[n] != c)
    if not columns or missing or wrong:
        raise ValueError(
            f"imatrix {imatrix} was not computed for {model_gguf.name}: {len(columns)} entries, "
            f"{len(missing)} name no tensor of the model (e.g. {missing[:3]}), {len(wrong)} have another width "
            f"(e.g. {wrong[:3]})"
        )


def kld_base(
    f16_path: Path, text_file: Path, base_out: Path, sources: LlamaCpp, context: int, chunks: int, threads=None
) -> float | None:
    """Store the F16 file's log-probabilities over the text (llama-perplexity --kl-divergence-base); its perplexity.

    The running perplexity the tool prints after its last chunk, `nan` and `inf` included: the weights or
    activations overflow half precision (the tool then prints no "Final estimate"). None when no such figure was
    printed (llama.cpp logs from a thread and can lose its last lines).
    """
    command = [sources.tool("llama-perplexity"), "-m", f16_path, "-f", text_file, "--kl-divergence-base", base_out]
    command += ["-c", str(context), "--chunks", str(chunks), "-t", _threads(threads), NO_REPACK]
    output = run_tool(command)
    return running_perplexity(output)


def running_perplexity(output: str) -> float | None:
    """The last running perplexity llama-perplexity printed (`[1]23.4567,[2]21.3052,`: 21.3052; `-nan` is NaN)."""
    running = re.findall(r"\[\d+\](-?(?:[0-9.]+|nan|inf)),", output, re.IGNORECASE)
    return float(running[-1]) if running else None


_STATS = {
    "mean_kld": r"Mean\s+KLD:\s+([-0-9.e+]+)",
    "median_kld": r"Median\s+KLD:\s+([-0-9.e+]+)",
    "p99_kld": r"99\.0%\s+KLD:\s+([-0-9.e+]+)",
    "max_kld": r"Maximum KLD:\s+([-0-9.e+]+)",
    "same_top_pct": r"Same top p:\s+([-0-9.e+]+)",
    "ppl": r"Mean PPL\(Q\)\s+:\s+([-0-9.e+]+)",
    "ppl_base": r"Mean PPL\(base\)\s+:\s+([-0-9.e+]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([-0-9.e+]+)",
    "chunks": r"computing over (\d+) chunks",
}


def parse_kld_output(output: str) -> dict[str, float]:
    """The statistics llama-perplexity --kl-divergence prints; ValueError naming what is missing."""
    stats, missing = {}, []
    for key, pattern in _STATS.items():
        match = re.search(pattern, output)
        if match is None:
            missing.append(key)
        else:
            stats[key] = float(match[1])
    if missing:
        raise ValueError(f"llama-perplexity printed no {missing} (fewer than 100 positions?):\n{output[-1500:]}")
    return stats


def kl_divergence(
    gguf_file,  # a gguf_export.GGUFFile
    base_file: Path,
    sources: LlamaCpp,
    context: int,
    imatrix: bool,
    threads: int | None = None,
) -> QuantFidelity:
    """Compare a quantized file with the stored F16 log-probabilities (llama-perplexity --kl-divergence)."""
    started = time.perf_counter()
    command = [sources.tool("llama-perplexity"), "-m", gguf_file.path, "--kl-divergence-base", base_file]
    command += ["--kl-divergence", "-c", str(context), "-t", _threads(threads), NO_REPACK]
    stats = parse_kld_output(run_tool(command))
    return QuantFidelity(
        file=gguf_file.path.name,
        file_type=gguf_file.file_type,
        imatrix=imatrix,
        bytes=gguf_file.bytes,
        bits_per_weight=gguf_file.bits_per_weight,
        mean_kld=stats["mean_kld"],
        median_kld=stats["median_kld"],
        p99_kld=stats["p99_kld"],
        max_kld=stats["max_kld"],
        same_top_share=stats["same_top_pct"] / 100,
        ppl=stats["ppl"],
        ppl_base=stats["ppl_base"],
        ppl_ratio=stats["ppl_ratio"],
        positions=int(stats["chunks"]) * (context - 1 - context // 2),
        context=context,
        seconds=time.perf_counter() - started,
    )


# ---- choice of type and pure checks -------------------------------------------------------------------------------
def kld_within(row: QuantFidelity, max_mean_kld: float, max_p99_kld: float | None = None) -> tuple[bool, str]:
    """(passed, description): mean KLD (and p99 when bounded) within the bounds."""
    figures = (
        f"{row.file_type}{' +imatrix' if row.imatrix else ''}: mean KLD {row.mean_kld:.5f}, p99 {row.p99_kld:.5f}, "
        f"same top {row.same_top_share:.1%}, PPL ratio {row.ppl_ratio:.4f} over {row.positions} positions"
    )
    passed = math.isfinite(row.mean_kld) and row.mean_kld <= max_mean_kld
    if max_p99_kld is not None:
        passed = passed and row.p99_kld <= max_p99_kld
    bound = f"mean <= {max_mean_kld}" + (f", p99 <= {max_p99_kld}" if max_p99_kld is not None else "")
    return passed, f"{figures}; bound {bound} {'met' if passed else 'exceeded'}"


def choose_type(
    rows: Sequence[QuantFidelity], max_mean_kld: float, max_p99_kld: float | None = None
) -> tuple[QuantFidelity | None, str]:
    """The smallest file within the bounds, and why; (None, why) when none is."""
    within = [row for row in rows if kld_within(row, max_mean_kld, max_p99_kld)[0]]
    if not within:
        best = min(rows, key=lambda r: r.mean_kld, default=None)
        closest = f"; closest {best.file_type} at mean KLD {best.mean_kld:.5f}" if best else ""
        return None, f"no candidate within mean KLD {max_mean_kld}{closest}"
    chosen = min(within, key=lambda r: (r.bytes, r.mean_kld))
    return chosen, (
        f"{chosen.file_type}{' with the domain imatrix' if chosen.imatrix else ''} is the smallest of "
        f"{len(within)}/{len(rows)} candidates within mean KLD {max_mean_kld}"
        + (f" and p99 KLD {max_p99_kld}" if max_p99_kld is not None else "")
        + f": {chosen.bytes / 1e6:.1f} MB, mean KLD {chosen.mean_kld:.5f}, same top {chosen.same_top_share:.1%}"
    )


def best_per_type(rows: Sequence[QuantFidelity]) -> dict[str, QuantFidelity]:
    """Per file type, the variant (with or without imatrix) with the lower mean KLD."""
    best: dict[str, QuantFidelity] = {}
    for row in rows:
        if row.file_type not in best or row.mean_kld < best[row.file_type].mean_kld:
            best[row.file_type] = row
    return best


def kld_markdown(rows: Sequence[QuantFidelity]) -> str:
    """Size against KLD per type and imatrix, as a markdown table."""
    if not rows:
        return "_no quantized files measured_"
    table = [row.row() for row in rows]
    header = list(table[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[k]) for k in header) + " |" for r in table]
    return "\n".join(lines)


def size_kld_plot(rows: Sequence[QuantFidelity], bound: float | None = None) -> bytes:
    """PNG: file size (MB) against mean KLD (log scale), with and without the imatrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for imatrix, marker, label in ((False, "o", "no imatrix"), (True, "s", "domain imatrix")):
        subset = [r for r in rows if r.imatrix == imatrix]
        if subset:
            axes.scatter(
                [r.bytes / 1e6 for r in subset], [max(r.mean_kld, 1e-6) for r in subset], marker=marker, label=label
            )
            for r in subset:
                axes.annotate(
                    r.file_type,
                    (r.bytes / 1e6, max(r.mean_kld, 1e-6)),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    if bound is not None:
        axes.axhline(bound, linestyle="--", color="grey", label=f"bound {bound}")
    axes.set_yscale("log")
    axes.set_xlabel("file size (MB)")
    axes.set_ylabel("mean KL divergence from F16")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str = "size vs KLD") -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
