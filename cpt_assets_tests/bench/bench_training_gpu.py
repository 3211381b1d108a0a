"""GPU throughput of the adapter's training function against two baselines, measured in one run.

Run on a CUDA machine (the `device` tool's H100/H200) from the repository root:

    PYTHONPATH=.carry/site python -m cpt_assets_tests.bench.bench_training_gpu --corpus .carry/corpus/texts.json.gz \
        --model-config .carry/smollm2 --cases peak,seed_trainer,plain_packed,ours_lora,ours_qlora,ours_unsloth

`.carry/` (ignored by git; `bash cpt_assets_tests/bench/training_carry.sh` builds it, about 50 MB) holds what the GPU
image lacks: `site/` the unpacked wheels (bitsandbytes, liger-kernel, unsloth and unsloth_zoo, datasets, trl, ...),
`smollm2/` SmolLM2-135M-Instruct's config.json and tokenizer, `corpus/texts.json.gz` the corpus PDFs' text as
{"train": [...], "validation": [...]} documents. Name `.carry` in the device call's carry list.

Throughput does not depend on weight values, so the model is SmolLM2-135M built from its real config.json with random
weights (bf16, saved as a HF folder once). Every case runs in its own Python process, so one case's OOM, compiled
graphs or unsloth's global patches never touch the next. Cases:

- peak: bf16 8192^3 matmul TFLOP/s on this GPU (the MFU denominator).
- seed_trainer: the seeds' shape: HF Trainer, batch 2 x accumulation 8, sequence 512, chunks padded to 512 (no
  packing), LoRA r=128 on all projections, bf16.
- plain_packed: transformers + peft with a plain loop (no Trainer), packed 2048-token blocks, at the largest batch
  that fits.
- ours_*: `cpt_assets.lib.training.train_adapter` itself at the largest batch that fits (unsloth: the CUDA default
  when installed; lora: bf16 + Liger fused linear cross-entropy, the default without unsloth; lora_compiled: the
  same with torch.compile; qlora: 4-bit NF4 + Liger).
- embeddings_<method>: a short train_adapter run with embed_tokens/lm_head trainable (modules_to_save, own
  learning rate): did they change (the unsloth #9326 trap), and did the validation loss fall.

Tokens/s counts the tokens in the blocks a step consumes (for seed_trainer also the padded positions), over the
steps after warm-up (compilation included in warm-up). MFU = 6 * parameters * tokens/s / measured peak.
Prints one table at the end; writes bench_training_gpu.json under $OUT (or --out) as it goes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BLOCK = 2048
WARMUP_STEPS = 3

# The same allocator settings for every case: fewer fragmentation OOMs at large batches.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def stub_duckdb() -> None:
    """`cpt_assets.lib.lake` imports duckdb, which the GPU image lacks and training never queries: stand in for it."""
    try:
        import duckdb  # noqa: F401
    except ImportError:
        import importlib.util
        import types

        stub = types.ModuleType("duckdb")
        stub.__spec__ = importlib.util.spec_from_loader("duckdb", loader=None)  # datasets calls find_spec("duckdb")
        sys.modules["duckdb"] = stub


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_corpus(path: Path) -> dict[str, list[str]]:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def build_model(config_dir: Path, out_dir: Path) -> Path:
    """SmolLM2-135M's architecture with random bf16 weights, saved with the real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "model.safetensors").exists():
        return out_dir
    config = AutoConfig.from_pretrained(str(config_dir))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(config_dir)).save_pretrained(str(out_dir))
    return out_dir


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        for name in handle.keys():
            count = 1
            for dim in handle.get_slice(name).get_shape():
                count *= dim
            total += count
    return total


def case_peak() -> dict:
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    median = statistics.median(times)
    return {"peak_tflops": 2 * n**3 / median / 1e12, "device": torch.cuda.get_device_name()}


def lora_config():
    from peft import LoraConfig

    from cpt_assets.lib.training import TrainingConfig

    defaults = TrainingConfig()
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=defaults.lora_r,
        lora_alpha=defaults.lora_alpha,
        lora_dropout=defaults.lora_dropout,
        use_rslora=defaults.use_rslora,
        target_modules=list(defaults.target_modules),
    )


def case_seed_trainer(model_dir: Path, corpus: dict, steps: int) -> dict:
    """HF Trainer, batch 2 x accumulation 8, chunks padded to 512, as the seed notebooks train."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # The seeds' chunks: about 1,500 characters of text each, tokenized one by one to at most 512.
    chunks = [doc[i : i + 1500] for doc in corpus["train"] for i in range(0, len(doc), 1500)]
    chunks = chunks[: steps * 16 + 64]
    dataset = Dataset.from_dict({"text": chunks}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=512, padding="max_length"),
        batched=True,
        remove_columns=["text"],
    )
    real_tokens = sum(sum(mask) for mask in dataset["attention_mask"])
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    model = get_peft_model(model, lora_config())
    times: list[float] = []

    class Timer(TrainerCallback):
        begin = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                times.append(time.perf_counter() - self.begin)

    args = TrainingArguments(
        output_dir="/tmp/bench-seed",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=8,
        learning_rate=5e-5,
        lr_scheduler_type="cosine",
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        bf16=True,
        report_to="none",
        disable_tqdm=True,
    )
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[Timer()],
    )
    trainer.train()
    timed = times[WARMUP_STEPS:]
    positions_per_step = 2 * 8 * 512
    real_per_step = positions_per_step * real_tokens / (len(dataset) * 512)
    return {
        "shape": "2 x 512 padded, accumulation 8",
        "tokens_per_s": real_per_step * len(timed) / sum(timed),
        "positions_per_s": positions_per_step * len(timed) / sum(timed),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "steps_timed": len(timed),
    }


def packed_blocks(model_dir: Path, corpus: dict, blocks_needed: int):
    from transformers import AutoTokenizer

    from cpt_assets.lib.packing import pack_blocks

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    packed = pack_blocks(corpus["train"], tokenizer, BLOCK)
    if packed.blocks < blocks_needed:
        log(f"corpus gives {packed.blocks} blocks of {BLOCK}, fewer than {blocks_needed}: blocks repeat")
    return packed


def case_plain_packed(model_dir: Path, corpus: dict, steps: int, batches: list[int]) -> dict:
    """Plain transformers + peft loop over packed blocks; the largest batch in `batches` that fits."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    packed = packed_blocks(model_dir, corpus, max(batches) * steps)
    rows_available = min(packed.blocks, max(batches) * steps)
    ids = packed.dataset.with_format("torch")[:rows_available]["input_ids"].long()
    tried = []
    for batch in batches:
        model = optimizer = None
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).cuda()
            model = get_peft_model(model, lora_config())
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, fused=True)
            times = []
            for step in range(steps):
                rows = [(step * batch + i) % len(ids) for i in range(batch)]
                x = ids[rows].cuda(non_blocking=True)
                start = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=x, labels=x).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss.item()
                times.append(time.perf_counter() - start)
            timed = times[WARMUP_STEPS:]
            return {
                "shape": f"{batch} x {BLOCK} packed",
                "tokens_per_s": batch * BLOCK * len(timed) / sum(timed),
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "steps_timed": len(timed),
                "oom_at": tried,
            }
        except torch.cuda.OutOfMemoryError:
            tried.append(batch)
            log(f"plain_packed: batch {batch} x {BLOCK} does not fit")
            del model, optimizer
    raise RuntimeError(f"no batch in {batches} fits")


def case_ours(model_dir: Path, corpus: dict, steps: int, method: str, batches: list[int], compile_: bool) -> dict:
    """`train_adapter` itself on packed 2048-token blocks, the largest batch in `batches` that fits."""
    import gc
    import shutil

    import torch

    from cpt_assets.lib.training import TrainingConfig, train_adapter

    tried = []
    for batch in batches:
        config = TrainingConfig(
            block_size=BLOCK,
            per_device_batch_size=batch,
            gradient_accumulation_steps=1,
            max_steps=steps,
            eval_steps=10_000,
            save_steps=10_000,
            max_eval_blocks=batch,
            method=method,
            torch_compile=compile_,
            device="cuda",
            num_epochs=1000.0,  # max_steps ends the run; the corpus may hold fewer blocks than steps * batch
        )
        work = Path("/tmp/bench-ours")
        shutil.rmtree(work, ignore_errors=True)
        try:
            result = train_adapter(
                model_dir, corpus["train"], corpus["validation"], config, work / "adapter", work / "checkpoints"
            )
        except torch.cuda.OutOfMemoryError:
            tried.append(batch)
            log(f"ours {method}: batch {batch} x {BLOCK} does not fit")
            gc.collect()
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            continue
        timed = result.step_seconds[WARMUP_STEPS:]
        tokens_per_step = batch * BLOCK
        return {
            "shape": f"{batch} x {BLOCK} packed",
            "method": result.method,
            "fallback": result.fallback_reason,
            "speedups": list(result.speedups),
            "tokens_per_s": tokens_per_step * len(timed) / sum(timed),
            "peak_gib": result.peak_memory_bytes / 2**30,
            "steps_timed": len(timed),
            "first_step_s": result.step_seconds[0],
            "eval_loss": [result.base_eval_loss, result.final_eval_loss],
            "trainable_share": result.trainable_share,
            "oom_at": tried,
        }
    raise RuntimeError(f"no batch in {batches} fits")


def case_embeddings(model_dir: Path, corpus: dict, method: str) -> dict:
    """A short `train_adapter` run with trainable embed_tokens/lm_head: do they move, and does the loss fall?

    unsloth drops embed_tokens/lm_head given as target_modules in continued pretraining (unsloth #9326); we pass
    them as modules_to_save with their own learning rate, and train_adapter checks after training that they changed.
    """
    import shutil

    from cpt_assets.lib.training import TrainingConfig, train_adapter

    config = TrainingConfig(
        block_size=512,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=10,
        num_epochs=100.0,
        eval_steps=5,
        max_eval_blocks=8,
        learning_rate=1e-3,
        train_embeddings=True,
        embedding_learning_rate=1e-4,
        method=method,
        device="cuda",
    )
    work = Path(f"/tmp/bench-embeddings-{method}")
    shutil.rmtree(work, ignore_errors=True)
    result = train_adapter(
        model_dir, corpus["train"][:8], corpus["validation"][:2], config, work / "adapter", work / "checkpoints"
    )
    return {
        "method": result.method,
        "fallback": result.fallback_reason,
        "embeddings_changed": result.embeddings_changed,
        "eval_loss": [(p.step, round(p.loss, 4)) for p in result.eval_losses],
        "trainable_share": result.trainable_share,
    }


CASES = {
    "seed_trainer": lambda a, m, c: case_seed_trainer(m, c, a.seed_steps),
    "plain_packed": lambda a, m, c: case_plain_packed(m, c, a.steps, a.plain_batches),
    "ours_lora": lambda a, m, c: case_ours(m, c, a.steps, "lora", a.our_batches, False),
    "ours_lora_compiled": lambda a, m, c: case_ours(m, c, a.steps, "lora", a.our_batches, True),
    "ours_qlora": lambda a, m, c: case_ours(m, c, a.steps, "qlora", a.our_batches, False),
    "ours_unsloth": lambda a, m, c: case_ours(m, c, a.steps, "unsloth", a.our_batches, False),
    "embeddings_lora": lambda a, m, c: case_embeddings(m, c, "lora"),
    "embeddings_qlora": lambda a, m, c: case_embeddings(m, c, "qlora"),
    "embeddings_unsloth": lambda a, m, c: case_embeddings(m, c, "unsloth"),
}


def run_child(args: argparse.Namespace) -> None:
    stub_duckdb()
    if args.case == "peak":
        result = case_peak()
    else:
        if args.case.endswith("_unsloth"):
            import unsloth  # noqa: F401  (must come before transformers so its patches apply)
        model_dir = Path(args.model_dir)
        corpus = load_corpus(Path(args.corpus))
        result = CASES[args.case](args, model_dir, corpus)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=".carry/corpus/texts.json.gz")
    parser.add_argument("--model-config", default=".carry/smollm2")
    parser.add_argument("--model-dir", default="/tmp/bench-smollm2-random")
    parser.add_argument("--cases", default="peak,seed_trainer,plain_packed,ours_lora,ours_qlora,ours_unsloth")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per packed case")
    parser.add_argument("--seed-steps", type=int, default=8, help="optimizer steps of the seed-shape case")
    parser.add_argument("--plain-batches", default="32,24,16,8")
    parser.add_argument("--our-batches", default="64,48,32,16")
    parser.add_argument("--case-timeout", type=int, default=300)
    parser.add_argument("--unsloth-path", default="", help="site folder with unsloth and its needs (unsloth case only)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/bench-out"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.plain_batches = [int(x) for x in str(args.plain_batches).split(",")]
    args.our_batches = [int(x) for x in str(args.our_batches).split(",")]
    if args.case:
        run_child(args)
        return

    from importlib.metadata import PackageNotFoundError, version

    import torch

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    names = ("torch", "transformers", "peft", "accelerate", "datasets", "liger-kernel", "bitsandbytes", "unsloth")
    log(", ".join(f"{n} {pkg(n)}" for n in names) + f"; GPU {torch.cuda.get_device_name()}")
    model_dir = build_model(Path(args.model_config), Path(args.model_dir))
    params = parameter_count(model_dir)
    log(f"model: {params:,} parameters (random weights from {args.model_config}/config.json)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {"parameters": {"count": params}}
    for case in args.cases.split(","):
        log(f"case {case} ...")
        command = [sys.executable, "-m", "cpt_assets_tests.bench.bench_training_gpu", "--case", case]
        command += ["--corpus", args.corpus, "--model-dir", str(model_dir), "--steps", str(args.steps)]
        command += ["--seed-steps", str(args.seed_steps), "--plain-batches", ",".join(map(str, args.plain_batches))]
        command += ["--our-batches", ",".join(map(str, args.our_batches))]
        env = dict(os.environ)
        if case == "ours_unsloth" and args.unsloth_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (args.unsloth_path, env.get("PYTHONPATH", "")) if p)
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.case_timeout, env=env)
            output = done.stdout + done.stderr
        except subprocess.TimeoutExpired as error:
            output = f"{error.stdout or ''}{error.stderr or ''}\nTIMEOUT after {args.case_timeout}s"
        (out / f"{case}.log").write_text(output if isinstance(output, str) else output.decode(errors="replace"))
        line = next((ln for ln in output.splitlines()[::-1] if ln.startswith("RESULT ")), None)
        if line:
            results[case] = json.loads(line.removeprefix("RESULT "))
        else:
            results[case] = {"error": "\n".join(output.splitlines()[-6:])}
        results[case]["case_seconds"] = time.perf_counter() - started
        log(f"case {case}: {json.dumps(results[case])[:600]}")
        (out / "bench_training_gpu.json").write_text(json.dumps(results, indent=2))

    peak = results.get("peak", {}).get("peak_tflops")
    print(f"\nGPU: {results.get('peak', {}).get('device', torch.cuda.get_device_name())}")
    print(f"bf16 matmul peak measured: {peak:.0f} TFLOP/s" if peak else "bf16 peak: not measured")
    print(f"{'case':<18} {'shape':<32} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}  notes")
    for case, row in results.items():
        if case in ("parameters", "peak"):
            continue
        if "error" in row:
            print(f"{case:<18} ERROR {row['error'][-300:]}")
            continue
        if case.startswith("embeddings_"):
            losses = " -> ".join(f"{loss:.3f}" for _, loss in row["eval_loss"])
            print(f"{case:<18} method {row['method']}, embeddings changed: {row['embeddings_changed']}, eval {losses}")
            continue
        mfu = 6 * params * row["tokens_per_s"] / (peak * 1e12) if peak else float("nan")
        notes = ", ".join(row.get("speedups", [])) or ""
        if row.get("fallback"):
            notes += f" fallback: {row['fallback']}"
        if row.get("positions_per_s"):
            notes += f" ({row['positions_per_s']:,.0f} positions/s incl. padding)"
        figures = f"{row['tokens_per_s']:>10,.0f} {row['peak_gib']:>9.1f} {mfu:>6.1%}"
        print(f"{case:<18} {row['shape']:<32} {figures}  {notes}")
    ours = [r["tokens_per_s"] for c, r in results.items() if c.startswith("ours") and "tokens_per_s" in r]
    plain = results.get("plain_packed", {}).get("tokens_per_s")
    if ours and plain:
        print(f"best train_adapter path / plain packed baseline: {max(ours) / plain:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
