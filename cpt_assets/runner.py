"""The main job through the Dagster instance, the way `dagster dev` and a deployment run it.

The CLI does not execute anything itself: it submits runs to the instance's run queue (QueuedRunCoordinator), a
dagster daemon dequeues them within the limits of dagster.yaml (runs at once, the `gpu` and `lake_writer` pools)
and launches each in its own process from the code location that workspace.yaml names, so every run carries that
origin and shows under its job in the UI. The corpus partitions go in as one job backfill (Dagster's own
`dagster job backfill` path), the splits and model stages as single runs once the partitions have finished.

Dagster's run monitoring cannot ask the default run launcher whether a run's process is alive, so `sweep_zombies`
does it here: a STARTED run whose recorded worker process is gone is marked failed (at start-up and while waiting).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._cli.job import _create_run
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.execution.job_backfill import create_backfill_run
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.remote_representation.external_data import PartitionExecutionErrorSnap
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.utils import make_new_backfill_id
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.controller import get_daemon_statuses
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._time import get_current_timestamp

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = REPO_ROOT / "workspace.yaml"
LOCATION = "cpt_assets"
SESSION_TAG = "cpt/session"
HOST_TAG = "cpt/host"
ACTIVE = {DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING}
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
log = logging.getLogger("cpt_assets")


# ---- the instance, created once ---------------------------------------------------------------------------------
@contextlib.contextmanager
def instance_lock(home: Path) -> Iterator[None]:
    """An exclusive lock on DAGSTER_HOME, held while the instance is created or the daemon is started or stopped."""
    with open(home / ".cpt.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_instance(home: Path) -> dg.DagsterInstance:
    """The instance under `home`, its sqlite schema created under the lock.

    Several processes creating a fresh sqlite instance at once race in Dagster's schema migration (two of four
    crashed in the issue's test); touching every storage once under a file lock makes the first creator the only one.
    """
    with instance_lock(home):
        instance = dg.DagsterInstance.from_config(str(home))
        instance.get_runs(limit=1)
        instance.fetch_materializations(dg.AssetKey("raw_pdfs"), limit=1)
        instance.all_instigator_state()
        instance.get_daemon_heartbeats()
        instance.event_log_storage.get_concurrency_keys()
    return instance


# ---- zombie runs ------------
def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid from the engine event the worker records when it starts ("Started process for run")."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    for record in reversed(records):
        event = record.event_log_entry.dagster_event
        pid = event.engine_event_data.metadata.get("pid") if event is not None else None
        if pid is not None and isinstance(pid.value, (int, str)):
            return int(pid.value)
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as dead
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def sweep_zombies(instance: dg.DagsterInstance, retry: bool = True) -> list[str]:
    """Mark STARTED runs whose worker process died as failed; returns their run ids.

    With `retry=False` (the start-up sweep) the daemon does not retry them: the main job that follows reruns
    what it needs itself, and a retry racing it over the same partition would only duplicate the work.

    Only for the default run launcher, whose workers are processes of this machine: other launchers (Kubernetes,
    Celery, Docker) answer this themselves through run monitoring's `check_run_worker_health`.
    """
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return []
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    failed = []
    for run in runs:
        host = run.tags.get(HOST_TAG)
        if host and host != socket.gethostname():
            continue
        pid = _worker_pid(instance, run.run_id)
        if pid is None or pid_alive(pid):
            continue
        if not retry:
            instance.add_run_tags(run.run_id, {"dagster/max_retries": "0"})
            run = instance.get_run_by_id(run.run_id) or run
        instance.report_run_failed(run, f"run worker process {pid} is gone (killed or crashed); marked failed")
        failed.append(run.run_id)
    return failed


# ---- the daemon ------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class UserError(Exception):
    """A mistake in the user's input or set-up: the CLI prints the message alone, without a traceback."""


# A daemon heartbeats every 30 s. Dagster's own health check tolerates 30 minutes of silence, so a daemon stopped a
# minute ago still reads "healthy" to it: a queue daemon counts as running here only if it beat within a minute.
HEARTBEAT_TOLERANCE_S = 30.0


def _foreign_queue_daemon(instance: dg.DagsterInstance) -> bool:
    name = QueuedRunCoordinatorDaemon.daemon_type()
    statuses = get_daemon_statuses(
        instance, [name], ignore_errors=True, heartbeat_tolerance_seconds=HEARTBEAT_TOLERANCE_S
    )
    return bool(statuses[name].healthy)


@dataclass
class DaemonHandle:
    """The daemon the CLI runs on this instance, shared by concurrent CLIs and stopped by the last one to leave."""

    home: Path
    client_pid: int = field(default_factory=os.getpid)
    foreign: bool = False  # the queue is served by a daemon this CLI did not start

    @property
    def state_path(self) -> Path:
        return self.home / "cpt-daemon.json"

    def _state(self) -> dict:
        state = _read_json(self.state_path)
        state["clients"] = [pid for pid in state.get("clients", []) if pid_alive(pid)]
        return state

    def clients(self) -> list[int]:
        """The pids of the living CLIs registered with this instance's daemon."""
        return self._state()["clients"]

    def start(self, instance: dg.DagsterInstance) -> None:
        with instance_lock(self.home):
            state = self._state()
            env = {key: value for key, value in os.environ.items() if key.startswith("CPT_")}
            if state.get("pid") and pid_alive(state["pid"]) and state.get("env") != env:
                raise UserError(
                    f"a cpt-pipeline daemon with other CPT_* settings ({state.get('env')}) runs on this instance "
                    f"({self.home}); wait for it or use another DAGSTER_HOME"
                )
            # heartbeats from our own daemon that was killed still look healthy for a minute: not a foreign daemon
            ours_died = bool(state.get("pid")) and not pid_alive(state["pid"])
            if not state.get("pid") and _foreign_queue_daemon(instance):
                log.info("a dagster daemon (dagster dev?) already serves this instance's run queue: using it")
                self.foreign = True
                return
            if ours_died:
                log.warning("the dagster daemon this CLI's predecessor started (pid %d) is gone", state["pid"])
            if not (state.get("pid") and pid_alive(state["pid"])):
                log_file = open(self.home / "cpt-daemon.log", "ab")  # noqa: SIM115 (the daemon owns it)
                process = subprocess.Popen(
                    [sys.executable, "-m", "cpt_assets.daemon"],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "DAGSTER_HOME": str(self.home)},
                )
                state = {"pid": process.pid, "clients": [], "env": env}
                log.info("started the dagster daemon (pid %d, log %s)", process.pid, log_file.name)
            state["clients"] = [*state["clients"], self.client_pid]
            self.state_path.write_text(json.dumps(state))

    def alive(self, instance: dg.DagsterInstance | None = None) -> bool:
        if self.foreign:
            return instance is None or _foreign_queue_daemon(instance)
        pid = _read_json(self.state_path).get("pid")
        return bool(pid) and pid_alive(pid)

    def stop(self, instance: dg.DagsterInstance) -> None:
        if self.foreign:
            return
        with instance_lock(self.home):
            state = self._state()
            state["clients"] = [pid for pid in state["clients"] if pid != self.client_pid]
            pid = state.get("pid")
            if state["clients"] or not pid:
                self.state_path.write_text(json.dumps(state))
                return
            stop_process_group(pid)
            # Its heartbeats look healthy for a minute after it stops: the next CLI would take them for a foreign
            # daemon (dagster dev) and wait for a queue nobody serves.
            instance.wipe_daemon_heartbeats()
            self.state_path.unlink(missing_ok=True)
            log.info("stopped the dagster daemon (pid %d)", pid)


def stop_process_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group leader and its group, then SIGKILL whatever is left after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# ---- submitting runs ------------
@contextlib.contextmanager
def workspace(instance: dg.DagsterInstance) -> Iterator[WorkspaceRequestContext]:
    """The code location as workspace.yaml (and so the daemon and the UI) load it."""
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)])) as process_context:
        context = process_context.create_request_context()
        error = context.get_code_location_error(LOCATION)
        if error is not None:
            raise RuntimeError(f"code location {LOCATION} failed to load: {error.message.strip()}")
        yield context


def _active_run(instance: dg.DagsterInstance, job: str, partition: str | None) -> dg.DagsterRun | None:
    """A queued or running run of `job` (for `partition`), so concurrent CLIs join it instead of duplicating it."""
    tags = {"dagster/partition": partition} if partition else {}
    for run in instance.get_runs(RunsFilter(job_name=job, statuses=list(ACTIVE), tags=tags), limit=5):
        if partition or "dagster/partition" not in run.tags:
            return run
    return None


def submit_backfill(
    instance: dg.DagsterInstance, context: WorkspaceRequestContext, job: str, partitions: Sequence[str], tags: dict
) -> tuple[str | None, list[str]]:
    """One job backfill over `partitions` (runs submitted to the queue); partitions already running are joined."""
    location = context.get_code_location(LOCATION)
    repo = next(iter(location.get_repositories().values()))
    remote_job = repo.get_full_job(job)
    partition_set = next(ps for ps in repo.get_partition_sets() if ps.job_name == job)
    run_ids, todo = [], []
    for key in partitions:
        active = _active_run(instance, job, key)
        if active is not None:
            log.info("%s[%s] is already %s (run %s): waiting for it", job, key, active.status.value, active.run_id)
            run_ids.append(active.run_id)
        else:
            todo.append(key)
    if not todo:
        return None, run_ids
    backfill = PartitionBackfill(
        backfill_id=make_new_backfill_id(),
        partition_set_origin=partition_set.get_remote_origin(),
        status=BulkActionStatus.REQUESTED,
        partition_names=todo,
        from_failure=False,
        reexecution_steps=None,
        tags=tags,
        backfill_timestamp=get_current_timestamp(),
        title=f"cpt-pipeline: {job} over {', '.join(todo)}",
    )
    params = location.get_partition_set_execution_params(
        repository_handle=repo.handle, partition_set_name=partition_set.name, partition_names=todo, instance=instance
    )
    if isinstance(params, PartitionExecutionErrorSnap):
        raise RuntimeError(f"the partitions of {job} could not be resolved: {params.error}")
    for data in params.partition_data:
        run = create_backfill_run(
            context, instance, location, remote_job, partition_set, backfill, data.name, data.tags, data.run_config
        )
        if run is not None:
            instance.submit_run(run.run_id, context)
            run_ids.append(run.run_id)
    instance.add_backfill(backfill.with_status(BulkActionStatus.COMPLETED).with_end_timestamp(get_current_timestamp()))
    return backfill.backfill_id, run_ids


def submit_job(instance: dg.DagsterInstance, context: WorkspaceRequestContext, job: str, tags: dict) -> str:
    """One run of an unpartitioned job through the queue, as `dagster job launch` makes it."""
    location = context.get_code_location(LOCATION)
    repo = next(iter(location.get_repositories().values()))
    run = _create_run(
        instance=instance,
        code_location=location,
        remote_repo=repo,
        remote_job=repo.get_full_job(job),
        run_config={},
        tags=tags,
        op_selection=None,
        run_id=None,
    )
    return instance.submit_run(run.run_id, context).run_id


# ---- waiting ------------
def run_label(run: dg.DagsterRun) -> str:
    partition = run.tags.get("dagster/partition")
    return f"{run.job_name}[{partition}]" if partition else run.job_name


def current_step(instance: dg.DagsterInstance, run_id: str) -> str | None:
    running: dict[str, None] = {}
    for record in instance.get_records_for_run(run_id, of_type=STEP_EVENTS).records:
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            running[event.step_key] = None
        else:
            running.pop(event.step_key, None)
    return ", ".join(running) or None


def _latest_attempt(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """The run itself or its newest automatic retry (`dagster/max_retries`)."""
    retries = instance.get_runs(RunsFilter(tags={"dagster/root_run_id": run.root_run_id or run.run_id}), limit=1)
    return retries[0] if retries else run


def _settled(run: dg.DagsterRun) -> bool:
    """Finished, and no retry is coming (the retry daemon tags a failed run it will retry)."""
    return run.status in FINISHED and not (
        run.status == DagsterRunStatus.FAILURE and run.tags.get("dagster/will_retry") == "true"
    )


def wait_for(
    instance: dg.DagsterInstance, run_ids: Sequence[str], daemon: DaemonHandle, poll_s: float = 2.0
) -> list[dg.DagsterRun]:
    """Wait until every run (following its retries) has finished; log progress when it changes."""
    last = None
    while True:
        sweep_zombies(instance)
        runs = [_latest_attempt(instance, run) for run in instance.get_runs(RunsFilter(run_ids=list(run_ids)))]
        done = [run for run in runs if _settled(run)]
        running = [run for run in runs if run.status == DagsterRunStatus.STARTED]
        steps = [f"{run_label(run)}: {current_step(instance, run.run_id) or 'between steps'}" for run in running]
        queued = sum(run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED) for run in runs)
        line = f"{len(done)}/{len(runs)} runs done, {queued} queued; running: {'; '.join(steps) or '-'}"
        if line != last:
            log.info(line)
            last = line
        if len(done) == len(runs):
            return runs
        if not daemon.alive(instance) and queued:
            raise RuntimeError(f"the dagster daemon stopped; see {daemon.home / 'cpt-daemon.log'}")
        time.sleep(poll_s)


def failure_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The failed step with the first line of its error (or its failed blocking checks), else the run's message."""
    records = instance.get_records_for_run(
        run.run_id,
        of_type={
            dg.DagsterEventType.STEP_FAILURE,
            dg.DagsterEventType.RUN_FAILURE,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
        },
    ).records
    events = [
        (record.event_log_entry, record.event_log_entry.dagster_event)
        for record in records
        if record.event_log_entry.dagster_event is not None
    ]
    checks = [
        f"check {data.check_name} failed: {data.description}"
        for _, event in events
        if isinstance(data := event.event_specific_data, dg.AssetCheckEvaluation)
        and not data.passed
        and data.severity == dg.AssetCheckSeverity.ERROR
    ]
    for _, event in events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            if checks:
                return f"step {event.step_key}: {'; '.join(checks)}"
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause  # the user's exception is the innermost cause
            message = (error.message if error else "").strip().splitlines()
            return f"step {event.step_key}: {message[0] if message else 'failed'}"
    for entry, event in events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            return entry.message or entry.user_message
    return run.status.value.lower()


# ---- the main job ------------
def _splits_metadata(instance: dg.DagsterInstance, run_id: str) -> dict:
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == dg.AssetKey("corpus_splits"):
            return {key: value.value for key, value in materialization.metadata.items()}
    return {}


def _cancel_queued(instance: dg.DagsterInstance, session: str) -> None:
    queued = instance.get_runs(RunsFilter(tags={SESSION_TAG: session}, statuses=[DagsterRunStatus.QUEUED]))
    for run in queued:
        instance.report_run_canceled(run, "cpt-pipeline was interrupted before this run started")


def run_main_job(home: Path, partitions: Sequence[str], corpus_only: bool) -> int:
    """Corpus partitions as one backfill, then the splits, then (unless corpus_only) the model; 0 when all passed."""
    from cpt_assets.defs.jobs import CORPUS_JOB, MODEL_JOB, SPLITS_JOB

    started = time.monotonic()
    instance = open_instance(home)
    for run_id in sweep_zombies(instance, retry=False):
        log.warning("run %s was left STARTED by a process that died; marked failed", run_id)
    session = make_new_backfill_id()
    tags = {SESSION_TAG: session, HOST_TAG: socket.gethostname(), "cpt/launched_by": "cpt-pipeline"}
    daemon = DaemonHandle(home)
    daemon.start(instance)
    problems: list[str] = []
    timings: dict[str, float] = {}
    try:
        with workspace(instance) as context:
            with instance_lock(home):  # concurrent CLIs join one backfill instead of each submitting theirs
                backfill_id, run_ids = submit_backfill(instance, context, CORPUS_JOB, partitions, tags)
            log.info(
                "corpus backfill %s: %d run(s) for %s", backfill_id or "(joined)", len(run_ids), ", ".join(partitions)
            )
            corpus_runs = wait_for(instance, run_ids, daemon)
            timings["corpus"] = time.monotonic() - started
            problems += [
                f"{run_label(r)} failed: {failure_reason(instance, r)} (run {r.run_id})"
                for r in corpus_runs
                if r.status != DagsterRunStatus.SUCCESS
            ]
            stages = [SPLITS_JOB] if corpus_only else [SPLITS_JOB, MODEL_JOB]
            for job in stages:
                with instance_lock(home):
                    active = _active_run(instance, job, None)
                    run_id = active.run_id if active else submit_job(instance, context, job, tags)
                log.info("%s: run %s%s", job, run_id, " (joined)" if active else "")
                stage_started = time.monotonic()
                [run] = wait_for(instance, [run_id], daemon)
                timings[job] = time.monotonic() - stage_started
                if run.status != DagsterRunStatus.SUCCESS:
                    problems.append(f"{job} failed: {failure_reason(instance, run)} (run {run.run_id})")
                    break
                if job == SPLITS_JOB:
                    missing = _splits_metadata(instance, run_id).get("sources_missing") or {}
                    if missing:
                        problems.append(f"splits were made without {', '.join(sorted(missing))}: {missing}")
    except KeyboardInterrupt:
        _cancel_queued(instance, session)
        problems.append("interrupted")
    finally:
        daemon.stop(instance)
        sweep_zombies(instance, retry=False)
    log.info(
        "wall time %.1f s (%s)", time.monotonic() - started, ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    )
    if problems:
        log.error("FAILED:\n  %s\n(details: `cpt-ui`, Runs page; DAGSTER_HOME=%s)", "\n  ".join(problems), home)
        return 1
    log.info("all runs succeeded; see them with `cpt-ui` (DAGSTER_HOME=%s)", home)
    return 0
