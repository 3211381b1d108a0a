"""The dagster daemon `cpt-pipeline` runs while it waits: Dagster's own daemon controller, main job daemons only.

`dagster-daemon run` would also start the sensor and schedule daemons, and the corpus automation sensor would then
launch a second corpus_splits run of its own as soon as the partitions land, racing the CLI's. `dagster dev` (and a
deployment's `dagster-daemon run`) keeps running all of them; the CLI joins such a daemon instead of starting one.

The last CLI to leave stops it. A CLI that is killed cannot: the daemon then stops itself once no CLI that registered
in DAGSTER_HOME/cpt-daemon.json is alive, so a killed main job leaves no daemon behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import dagster as dg
from dagster._core.workspace.load_target import GrpcServerTarget, WorkspaceFileTarget
from dagster._daemon.auto_run_reexecution.event_log_consumer import EventLogConsumerDaemon
from dagster._daemon.controller import create_daemon_of_type, daemon_controller_from_instance
from dagster._daemon.daemon import MonitoringDaemon
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._grpc.server import GrpcServerProcess

from cpt_assets.runner import LOCATION, WORKSPACE, DaemonHandle

# The run queue; run monitoring (start timeouts); run retries (`dagster/max_retries`).
DAEMON_TYPES = (QueuedRunCoordinatorDaemon, MonitoringDaemon, EventLogConsumerDaemon)


ORPHAN_CHECK_S = 10.0  # how often the daemon looks for a living CLI
ORPHAN_GRACE_S = 30.0  # how long it waits, after starting, for its first CLI to register


def has_clients(home: Path) -> bool:
    """Whether a CLI that registered with this instance's daemon is still alive."""
    return bool(DaemonHandle(home).clients())


def stop_when_orphaned(home: Path, check_s: float = ORPHAN_CHECK_S, grace_s: float = ORPHAN_GRACE_S) -> None:
    """Interrupt this process (a clean shutdown of the daemon controller) once no CLI is left."""
    time.sleep(grace_s)
    while has_clients(home):
        time.sleep(check_s)
    os.kill(os.getpid(), signal.SIGINT)


def watch_for_orphaning(
    home: Path, check_s: float = ORPHAN_CHECK_S, grace_s: float = ORPHAN_GRACE_S
) -> threading.Thread:
    """Start the orphan watch (call from the main thread).

    SIGINT is handed to Python first: a CLI started in a background job or by a script under nohup runs with SIGINT
    ignored, its daemon inherits that, and the watch's interrupt would do nothing (an orphan left running).
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(
        target=stop_when_orphaned, args=(home, check_s, grace_s), daemon=True, name="orphan-watch"
    )
    thread.start()
    return thread


def code_server(instance: dg.DagsterInstance) -> GrpcServerProcess:
    """One code server for workspace.yaml's location, for the daemon's whole life.

    Dagster's daemon controller reloads its workspace every minute, and for a workspace.yaml `python_module` entry that
    means a new code server process each time: a fresh import of the definitions (about 2 CPU-seconds here), taken from
    the training or scoring step that has the machine's two cores (25 in one 26-minute CPU main job). Given a
    `grpc_server` target instead, the reload is one call to this server. The server is a child in the daemon's
    process group, so whatever stops the daemon stops it too.
    """
    (origin,) = WorkspaceFileTarget(paths=[str(WORKSPACE)]).create_origins()
    return GrpcServerProcess(
        instance_ref=instance.get_ref(),
        location_name=LOCATION,
        loadable_target_origin=origin.loadable_target_origin,  # pyright: ignore[reportAttributeAccessIssue]
        wait_on_exit=True,
    )


def main() -> int:
    home = Path(os.environ["DAGSTER_HOME"])
    watch_for_orphaning(home)
    with dg.DagsterInstance.get() as instance, code_server(instance) as server:
        types = [daemon.daemon_type() for daemon in DAEMON_TYPES]
        with daemon_controller_from_instance(
            instance,
            workspace_load_target=GrpcServerTarget(
                host="localhost", port=server.port, socket=server.socket, location_name=LOCATION
            ),
            gen_daemons=lambda inst: [create_daemon_of_type(name, inst) for name in types],
        ) as controller:
            try:
                controller.check_daemon_loop()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
