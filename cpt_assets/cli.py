"""Command-line entry points: the main job and the UI, on one shared Dagster instance.

`cpt-pipeline` runs the whole graph through the Dagster instance under DAGSTER_HOME: every source partition of the
corpus stages as one backfill, in parallel under the instance's run queue and pools, then the splits, then the model
stages (cpt_assets/runner.py). Each run, its lineage and its metadata show in `cpt-ui` (`dagster dev`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("cpt_assets")
UI_STOP_GRACE_S = 5.0  # what `dagster dev` gets to stop on its own before its process group is killed


def prepare_dagster_home() -> Path:
    """DAGSTER_HOME (default .dagster_home/ in the repo) with the repo's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME", REPO_ROOT / ".dagster_home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _offline_defaults() -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch threads spin-wait by default, which slows them ~100x on a small machine shared with other work
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _user_error(prog: str, error: BaseException) -> int:
    """A user's mistake: its message on stderr, no traceback, exit code 2."""
    sys.stderr.write(f"{prog}: error: {error}\n")
    return 2


def _check_paths() -> None:
    """The lake root must be creatable; the mirror, when named, must exist."""
    from cpt_assets.defs.resources import default_lake_root
    from cpt_assets.runner import UserError

    lake = Path(default_lake_root())
    try:
        lake.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"data lake {lake} (CPT_DATA_LAKE) cannot be created: {error.strerror}") from error
    if not os.access(lake, os.W_OK):
        raise UserError(f"data lake {lake} (CPT_DATA_LAKE) is not writable")
    mirror = os.environ.get("CPT_MIRROR")
    if mirror and not Path(mirror).is_dir():
        log.warning("mirror folder %s (CPT_MIRROR) does not exist; sources will be downloaded", mirror)


def _load_registry_or_exit(prog: str):
    from cpt_assets.lib.sources import load_registry

    try:
        return load_registry()
    except (ValueError, OSError) as error:
        sys.exit(_user_error(prog, error))


def main(argv: list[str] | None = None) -> int:
    """Run the main job: every corpus partition, then (unless --corpus-only) the model stages."""
    parser = argparse.ArgumentParser(prog="cpt-pipeline", description=__doc__)
    parser.add_argument("--sources", help="comma-separated source partitions (default: every source in the registry)")
    parser.add_argument("--corpus-only", action="store_true", help="stop after the corpus splits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # sqlite schema stamping, once per storage
    _offline_defaults()
    registry = _load_registry_or_exit(parser.prog)
    partitions = args.sources.split(",") if args.sources else list(registry.names)
    unknown = sorted(set(partitions) - set(registry.names))
    if unknown:
        parser.error(f"unknown source(s) {unknown}; the registry {registry.path} has {list(registry.names)}")
    home = prepare_dagster_home()

    import signal

    from cpt_assets.runner import UserError, run_main_job

    def interrupt(signum, frame):  # noqa: ARG001 (signal handler signature)
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: queued runs canceled, the daemon stopped

    signal.signal(signal.SIGTERM, interrupt)

    try:
        _check_paths()
        return run_main_job(home, partitions, corpus_only=args.corpus_only)
    except UserError as error:
        return _user_error(parser.prog, error)


def ui(argv: list[str] | None = None) -> int:
    """`dagster dev` on the repo's workspace.yaml and the shared instance; SIGINT/SIGTERM stop it within seconds.

    `dagster dev` runs as a child in its own process group: a signal is passed on to it, and whatever of its tree
    (webserver, daemon, code servers, run workers) is still there a few seconds later is killed.
    """
    import signal
    import subprocess

    from cpt_assets.runner import stop_process_group

    _offline_defaults()
    _load_registry_or_exit("cpt-ui")
    prepare_dagster_home()
    args = list(sys.argv[1:] if argv is None else argv)
    dagster = Path(sys.executable).with_name("dagster")
    child = subprocess.Popen(
        [str(dagster), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), *args], cwd=REPO_ROOT, start_new_session=True
    )
    received: list[int] = []

    def forward(signum, frame):  # noqa: ARG001 (signal handler signature)
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    while child.poll() is None and not received:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
    if received:
        try:
            child.wait(timeout=UI_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        stop_process_group(child.pid, grace_s=2.0)
        return 128 + received[0]
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
