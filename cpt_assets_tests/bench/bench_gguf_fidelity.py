"""Fidelity of the GGUF export on the real SmolLM2-135M-Instruct, measured the way llama.cpp measures it.

The base model is exported once (packaged GGUF -> float32 safetensors, reused if `--base` already holds it), then
`export_gguf` converts it with llama.cpp's own convert_hf_to_gguf.py, computes a domain importance matrix on train
text, quantizes every candidate type with and without it, and measures each against the F16 file with
`llama-perplexity --kl-divergence`: size, bits/weight, mean/median/p99 KLD, same-top-token share, perplexity ratio.
F16 is also compared with the HF model (tokenization, perplexity). Test and train texts are disjoint page ranges of
real corpus PDFs (RFCs and NIST publications), extracted with pymupdf.

The hand-written GGUF writer this replaced is timed from its last commit (`--old-writer-commit`), so conversion and
quantization times can be compared in one run.

Run: python -m cpt_assets_tests.bench.bench_gguf_fidelity [--base /tmp/gguf_base] [--out /tmp/gguf_bench]
     [--quantizations Q4_0 Q4_K_M Q5_K_M Q6_K Q8_0] [--old-writer-commit 8630eb9]
Prints the tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymupdf

from cpt_assets.lib.base_model import export_base_model
from cpt_assets.lib.gguf_export import (
    CANDIDATE_TYPES,
    GGUFExportConfig,
    Provenance,
    export_gguf,
    quantize_gguf,
    toolchain_versions,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = Path(os.environ.get("CPT_CORPUS", REPO.parent / "shared" / "corpus"))
# (document, first page, last page): body pages of a few standards, not title pages.
TEST_PAGES = (
    ("ietf/rfc2119.txt.pdf", 0, 1),
    ("ietf/rfc8446.txt.pdf", 10, 11),
    ("ietf/rfc6749.txt.pdf", 8, 9),
    ("nist/FIPS199.pdf", 2, 3),
    ("nist/NIST.SP.800-190.pdf", 8, 9),
)
# Train text for the importance matrix: other pages of other documents (no overlap with TEST_PAGES).
TRAIN_PAGES = (
    ("ietf/rfc8446.txt.pdf", 20, 29),
    ("ietf/rfc6749.txt.pdf", 20, 27),
    ("nist/NIST.SP.800-190.pdf", 14, 21),
)


def corpus_texts(corpus: Path, pages=TEST_PAGES) -> list[str]:
    """One text per document: the pages' text joined, as the test split would give it."""
    texts = []
    for name, first, last in pages:
        with pymupdf.open(corpus / name) as document:
            texts.append("\n".join(document[i].get_text() for i in range(first, min(last, len(document) - 1) + 1)))
    return texts


def old_writer_times(commit: str, model_dir: Path, work: Path) -> tuple[float, float]:
    """(F16 write seconds, Q4_K_M quantize seconds) of the hand-written writer as it was at `commit`."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:cpt_assets/lib/gguf_export.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = work / "old_gguf_export.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_gguf_export", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_gguf_export"] = module
    spec.loader.exec_module(module)
    provenance = module.Provenance(name="bench", base_model_name="smollm2-135m-instruct")
    started = time.perf_counter()
    f16 = module.write_f16_gguf(model_dir, work / "old-F16.gguf", provenance)
    write = time.perf_counter() - started
    started = time.perf_counter()
    module.quantize_gguf(f16.path, work / "old-Q4_K_M.gguf", "Q4_K_M")
    return write, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--base", type=Path, default=Path("/tmp/gguf_base"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/gguf_bench"))
    parser.add_argument("--quantizations", nargs="+", default=list(CANDIDATE_TYPES))
    parser.add_argument("--kld-tokens", type=int, default=8192)
    parser.add_argument("--imatrix-tokens", type=int, default=8192)
    parser.add_argument("--old-writer-commit", default="8630eb9", help="'' to skip timing the old writer")
    args = parser.parse_args()

    started = time.perf_counter()
    base = export_base_model("smollm2-135m-instruct", args.base)
    print(
        f"base model: {base.path} ({base.parameters / 1e6:.1f} M parameters, {base.weights_bytes / 1e6:.1f} MB, "
        f"{'reused' if base.reused else f'exported in {time.perf_counter() - started:.1f}s'})"
    )
    texts, train = corpus_texts(args.corpus), corpus_texts(args.corpus, TRAIN_PAGES)
    print(f"test texts: {len(texts)} documents, {sum(map(len, texts))} chars; train: {sum(map(len, train))} chars")
    print(f"toolchain: {toolchain_versions()}; threads: {os.cpu_count()}")

    config = GGUFExportConfig(
        quantizations=tuple(args.quantizations),
        kld_max_tokens=args.kld_tokens,
        imatrix_max_tokens=args.imatrix_tokens,
        modelfile_type=None,
    )
    provenance = Provenance(
        name="smollm2-135m-instruct-bench",
        base_model_name="smollm2-135m-instruct",
        base_model_sha256=base.weights_sha256,
    )
    started = time.perf_counter()
    export = export_gguf(base.path, args.out, provenance, texts, config, train_texts=train)
    total = time.perf_counter() - started

    f16 = export.fidelity[0]
    print(
        f"\nF16 vs HF float32: perplexity {f16.gguf_perplexity:.4f} vs {export.hf_perplexity:.4f} "
        f"({f16.relative_drift:+.3%}) on {f16.scored_tokens} tokens; tokenization "
        f"{'equal' if f16.tokenization_equal else 'DIFFERENT: ' + f16.first_mismatch} over {f16.tokens_compared} tokens"
    )
    if export.imatrix:
        m = export.imatrix
        print(f"domain imatrix: {m.entries} tensors, {m.chunks} chunks x {m.context} tokens, {m.seconds:.1f}s")
    rows = export.quant_fidelity
    positions = rows[0].positions if rows else 0
    print(f"\nKLD vs F16 over {positions} positions (llama-perplexity --kl-divergence, context {rows[0].context}):")
    header = (
        f"{'type':<8} {'imatrix':>7} {'MB':>8} {'bits/w':>7} {'mean KLD':>9} {'median':>9} {'p99 KLD':>9} "
        f"{'same top':>9} {'PPL ratio':>9} {'kept':>5}"
    )
    print(header)
    print("-" * len(header))
    kept = {f.path.name for f in export.files}
    for row in rows:
        print(
            f"{row.file_type:<8} {'yes' if row.imatrix else 'no':>7} {row.bytes / 1e6:>8.2f} "
            f"{row.bits_per_weight:>7.3f} "
            f"{row.mean_kld:>9.5f} {row.median_kld:>9.5f} {row.p99_kld:>9.5f} {row.same_top_share:>9.2%} "
            f"{row.ppl_ratio:>9.4f} {'*' if row.file in kept else '':>5}"
        )
    print(f"\nModelfile type: {export.chosen_type}: {export.choice_reason}")
    print(f"\nexport_gguf total: {total:.1f}s (HF reference {export.reference_seconds:.1f}s); files in {export.folder}")
    print("times (s): " + ", ".join(f"{f.file_type} {f.seconds:.1f}" for f in export.files))
    for gguf_file in export.files:
        print(f"  {gguf_file.path.name}: tensor types {gguf_file.tensor_types}")

    work = Path(tempfile.mkdtemp(prefix="gguf_old_writer_"))
    q4 = quantize_gguf(export.file("F16").path, work / "new-Q4_K_M.gguf", "Q4_K_M")
    print(
        f"\nconverter (convert_hf_to_gguf.py + provenance copy) F16: {export.file('F16').seconds:.1f}s; "
        f"llama-quantize Q4_K_M: {q4.seconds:.1f}s"
    )
    if args.old_writer_commit:
        write, quantize = old_writer_times(args.old_writer_commit, base.path, work)
        print(
            f"hand-written writer at {args.old_writer_commit} F16: {write:.1f}s; "
            f"llama_model_quantize (llama-cpp-python) Q4_K_M: {quantize:.1f}s"
        )
    for path in work.iterdir():
        path.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
