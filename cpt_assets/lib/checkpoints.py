"""The training checkpoint layout: which checkpoint a run may resume from, and when it must start fresh.

transformers' Trainer writes `checkpoint-<step>/` folders into its output directory, but not atomically: a process
killed while saving leaves a folder without `trainer_state.json` (written last), and `get_last_checkpoint` would
pick it. This module owns that folder: it records which run the checkpoints belong to (`cpt_run.json`: the config
hash and the training data fingerprint), resumes only from complete checkpoints of the same run, removes half-written
ones, and clears checkpoints of another config so a changed config never continues an old optimizer state.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cpt_assets.lib.lake import ADAPTER_WEIGHTS_FILE, RUN_MARKER, atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's folder names
# What a checkpoint needs to restore the exact training state; the Trainer writes trainer_state.json last.
REQUIRED_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
ADAPTER_WEIGHTS = (ADAPTER_WEIGHTS_FILE, "adapter_model.bin")


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Where training starts and why."""

    checkpoint: Path | None  # the newest complete checkpoint of this run, or None to start fresh
    reason: str  # one line for logs and metadata
    removed: tuple[str, ...] = ()  # checkpoint folders removed (half-written, or of another run)


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint holds the adapter weights, optimizer and scheduler state and the trainer state."""
    if not all((checkpoint / name).is_file() for name in REQUIRED_FILES):
        return False
    return any((checkpoint / name).is_file() for name in ADAPTER_WEIGHTS)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """All checkpoint folders, complete or not, oldest step first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def newest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    complete = [p for p in list_checkpoints(Path(checkpoints_dir)) if is_complete(p)]
    return complete[-1] if complete else None


def read_run_marker(checkpoints_dir: Path) -> dict | None:
    marker = Path(checkpoints_dir) / RUN_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_run_marker(checkpoints_dir: Path, run: dict) -> Path:
    marker = Path(checkpoints_dir) / RUN_MARKER
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(run, indent=2, sort_keys=True))
    return marker


def plan_resume(checkpoints_dir: Path, run: dict) -> ResumePlan:
    """Decide whether to resume, and tidy the folder so the Trainer only ever sees checkpoints of this run.

    Args:
        checkpoints_dir: the Trainer's output directory.
        run: what identifies the run (config hash, data fingerprint, base model); compared with the stored marker.

    Returns:
        The checkpoint to resume from (or None) and the reason. Checkpoints of another run and half-written ones
        are removed; the marker is (re)written.
    """
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    stored = read_run_marker(checkpoints_dir)
    existing = list_checkpoints(checkpoints_dir)
    removed: list[str] = []

    if existing and stored != run:
        changed = sorted(k for k in set(run) | set(stored or {}) if (stored or {}).get(k) != run.get(k))
        for folder in existing:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        write_run_marker(checkpoints_dir, run)
        reason = (
            f"starting fresh: {len(existing)} checkpoint(s) in {checkpoints_dir} belong to another run "
            f"(changed: {', '.join(changed) or 'no marker'}); removed"
        )
        log.warning(reason)
        return ResumePlan(None, reason, tuple(removed))

    for folder in existing:
        if not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
            log.warning("Removed half-written checkpoint %s (no trainer state, optimizer or weights)", folder)
    write_run_marker(checkpoints_dir, run)
    newest = newest_checkpoint(checkpoints_dir)
    if newest is None:
        return ResumePlan(None, "starting fresh: no complete checkpoint of this run", tuple(removed))
    return ResumePlan(newest, f"resuming from {newest.name} (same config and data)", tuple(removed))
