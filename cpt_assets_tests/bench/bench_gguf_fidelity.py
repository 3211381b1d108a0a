"""Fidelity of the GGUF export on the real SmolLM2-135M-Instruct: HF vs F16 vs Q8_0 vs Q4_K_M on standards text.

The base model is exported once (packaged GGUF -> float32 safetensors, reused if `--base` already holds it), then
`export_gguf` writes the F16 file with the `gguf` package, quantizes it with llama.cpp and verifies every file against
the HF model on the same token blocks: tokenization equality, perplexity and drift, greedy completions. The test
texts are a few pages of real corpus PDFs (RFCs and NIST publications), extracted with pymupdf.

Run: python -m cpt_assets_tests.bench.bench_gguf_fidelity [--base /tmp/gguf_base] [--out /tmp/gguf_bench]
     [--quantizations Q8_0 Q4_K_M] [--blocks 8] [--block-size 256]
Prints the table and the completions; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pymupdf

from cpt_assets.lib.base_model import export_base_model
from cpt_assets.lib.gguf_export import GGUFExportConfig, Provenance, export_gguf, toolchain_versions

DEFAULT_CORPUS = Path(os.environ.get("CPT_CORPUS", Path(__file__).resolve().parents[2].parent / "shared" / "corpus"))
# (document, first page, last page): body pages of a few standards, not title pages.
TEST_PAGES = (
    ("ietf/rfc2119.txt.pdf", 0, 1),
    ("ietf/rfc8446.txt.pdf", 10, 11),
    ("ietf/rfc6749.txt.pdf", 8, 9),
    ("nist/FIPS199.pdf", 2, 3),
    ("nist/NIST.SP.800-190.pdf", 8, 9),
)


def corpus_texts(corpus: Path, pages=TEST_PAGES) -> list[str]:
    """One text per document: the pages' text joined, as the test split would give it."""
    texts = []
    for name, first, last in pages:
        with pymupdf.open(corpus / name) as document:
            texts.append("\n".join(document[i].get_text() for i in range(first, min(last, len(document) - 1) + 1)))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--base", type=Path, default=Path("/tmp/gguf_base"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/gguf_bench"))
    parser.add_argument("--quantizations", nargs="+", default=["Q8_0", "Q4_K_M"])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    started = time.perf_counter()
    base = export_base_model("smollm2-135m-instruct", args.base)
    print(
        f"base model: {base.path} ({base.parameters / 1e6:.1f} M parameters, {base.weights_bytes / 1e6:.1f} MB, "
        f"{'reused' if base.reused else f'exported in {time.perf_counter() - started:.1f}s'})"
    )
    texts = corpus_texts(args.corpus)
    print(f"test texts: {len(texts)} documents, {sum(len(t) for t in texts)} characters ({args.corpus})")
    print(f"toolchain: {toolchain_versions()}; threads: {os.cpu_count()}")

    config = GGUFExportConfig(
        quantizations=tuple(args.quantizations),
        block_size=args.block_size,
        max_blocks=args.blocks,
        max_new_tokens=args.new_tokens,
    )
    provenance = Provenance(
        name="smollm2-135m-instruct-bench",
        base_model_name="smollm2-135m-instruct",
        base_model_sha256=base.weights_sha256,
    )
    started = time.perf_counter()
    export = export_gguf(base.path, args.out, provenance, texts, config)
    total = time.perf_counter() - started

    f16 = export.fidelity[0]
    print(
        f"\nHF float32 reference: perplexity {export.hf_perplexity:.4f} on {f16.scored_tokens} tokens "
        f"({f16.blocks} blocks of <= {args.block_size}), {f16.tokens_compared} tokens compared for tokenization, "
        f"{export.reference_seconds:.1f}s (load, score, {len(config.prompts)} greedy completions)"
    )
    header = (
        f"{'type':<8} {'MB':>8} {'bits/w':>7} {'write_s':>8} {'verify_s':>9} {'ppl':>10} {'drift':>9} "
        f"{'|dNLL|':>8} {'tokens':>7} {'same':>5}"
    )
    print(header)
    print("-" * len(header))
    for gguf_file, fidelity in zip(export.files, export.fidelity, strict=True):
        print(
            f"{gguf_file.file_type:<8} {gguf_file.bytes / 1e6:>8.2f} {gguf_file.bits_per_weight:>7.3f} "
            f"{gguf_file.seconds:>8.2f} {fidelity.seconds:>9.2f} {fidelity.gguf_perplexity:>10.4f} "
            f"{fidelity.relative_drift:>+9.3%} {fidelity.mean_abs_nll_diff:>8.5f} "
            f"{'equal' if fidelity.tokenization_equal else 'DIFF':>7} "
            f"{fidelity.identical_completions}/{len(fidelity.completions)}"
        )
    print(f"\nexport_gguf total: {total:.1f}s; files in {export.folder}")
    for gguf_file in export.files:
        print(f"  {gguf_file.path.name}: tensor types {gguf_file.tensor_types}")
    print("\nGreedy completions (HF | " + " | ".join(f.file_type for f in export.fidelity) + "):")
    for index, prompt in enumerate(config.prompts):
        print(f"\n  prompt {index}: {prompt!r}")
        print(f"    HF     : {export.fidelity[0].completions[index].hf!r}")
        for fidelity in export.fidelity:
            print(f"    {fidelity.file_type:<7}: {fidelity.completions[index].gguf!r}")


if __name__ == "__main__":
    main()
