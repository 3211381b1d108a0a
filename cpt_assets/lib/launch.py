"""Training on several devices: `train_adapter` launched by torchrun, one process per GPU, data parallel (DDP).

We do not write a launcher: torch's own (`python -m torch.distributed.run`) starts the processes, sets RANK,
WORLD_SIZE and LOCAL_RANK, and the Trainer inside `train_adapter` wraps the model in DDP from those variables
(NCCL on CUDA, gloo on CPU). The parent, the Dagster step, writes the job as a JSON spec, streams rank 0's progress
lines back to its caller, and reads the TrainResult that rank 0 writes. The same launch runs on CPU with gloo,
which is how CI tests it without a GPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cpt_assets.lib.lake import LAUNCH_RESULT_FILE, LAUNCH_SPEC_FILE, atomic_path
from cpt_assets.lib.training import TrainingConfig, TrainResult, train_adapter

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "CPT_PROGRESS "  # rank 0 prints one JSON log line per Trainer log after it


def visible_gpus() -> int:
    """CUDA devices this process may use (0 without CUDA), asked of torch when the step runs."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(config: TrainingConfig, device: str) -> int:
    """How many training processes a step starts: the config's num_processes, else one per visible GPU."""
    if config.num_processes:
        if device == "cuda" and config.num_processes > visible_gpus():
            raise ValueError(
                f"TrainingConfig.num_processes is {config.num_processes} but only {visible_gpus()} GPU(s) are visible"
            )
        return config.num_processes
    return max(visible_gpus(), 1) if device == "cuda" else 1


def train_adapter_launched(
    processes: int,
    base_model_dir: Path,
    train_texts: Mapping[str, Sequence[str]] | Sequence[str],
    validation_texts: Mapping[str, Sequence[str]] | Sequence[str],
    config: TrainingConfig,
    adapter_dir: Path,
    checkpoints_dir: Path,
    progress_callback: Callable[[dict], None] | None = None,
    init_adapter_dir: Path | None = None,
) -> TrainResult:
    """Run `train_adapter` in `processes` processes under torchrun and return rank 0's result.

    Raises:
        RuntimeError: a training process failed; the message carries the end of its output.
    """
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = checkpoints_dir / LAUNCH_SPEC_FILE, checkpoints_dir / LAUNCH_RESULT_FILE
    result_path.unlink(missing_ok=True)
    spec = {
        "base_model_dir": str(base_model_dir),
        "train_texts": train_texts,
        "validation_texts": validation_texts,
        "config": config.to_dict(),
        "adapter_dir": str(adapter_dir),
        "checkpoints_dir": str(checkpoints_dir),
        "result_path": str(result_path),
        "init_adapter_dir": str(init_adapter_dir) if init_adapter_dir else None,
    }
    with atomic_path(spec_path) as tmp:
        tmp.write_text(json.dumps(spec))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "cpt_assets.lib.launch",
        str(spec_path),
    ]
    log.info("Launching %d training processes: %s", processes, " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(PROGRESS_PREFIX):
                if progress_callback is not None:
                    progress_callback(json.loads(line[len(PROGRESS_PREFIX) :]))
                continue
            tail = (tail + [line.rstrip()])[-40:]
            log.debug("%s", line.rstrip())
    if child.returncode != 0 or not result_path.is_file():
        raise RuntimeError(
            f"torchrun with {processes} training processes exited with {child.returncode}:\n" + "\n".join(tail)
        )
    return TrainResult.from_dict(json.loads(result_path.read_text()))


def _worker(spec_path: Path) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))

    def progress(line: dict) -> None:
        if rank == 0:
            print(PROGRESS_PREFIX + json.dumps(line, default=str), flush=True)  # noqa: T201 (the parent reads it)

    result = train_adapter(
        Path(spec["base_model_dir"]),
        spec["train_texts"],
        spec["validation_texts"],
        TrainingConfig.from_dict(spec["config"]),
        Path(spec["adapter_dir"]),
        Path(spec["checkpoints_dir"]),
        progress_callback=progress,
        init_adapter_dir=Path(spec["init_adapter_dir"]) if spec.get("init_adapter_dir") else None,
    )
    if rank == 0:
        with atomic_path(Path(spec["result_path"])) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), default=str))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
