"""The dagster daemon `cpt-pipeline` runs while it waits: Dagster's own daemon controller, main job daemons only.

`dagster-daemon run` would also start the sensor and schedule daemons, and the corpus automation sensor would then
launch a second corpus_splits run of its own as soon as the partitions land, racing the CLI's. `dagster dev` (and a
deployment's `dagster-daemon run`) keeps running all of them; the CLI joins such a daemon instead of starting one.
"""

from __future__ import annotations

import sys

import dagster as dg
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.auto_run_reexecution.event_log_consumer import EventLogConsumerDaemon
from dagster._daemon.controller import create_daemon_of_type, daemon_controller_from_instance
from dagster._daemon.daemon import MonitoringDaemon
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from cpt_assets.runner import WORKSPACE

# The run queue; run monitoring (start timeouts); run retries (`dagster/max_retries`).
DAEMON_TYPES = (QueuedRunCoordinatorDaemon, MonitoringDaemon, EventLogConsumerDaemon)


def main() -> int:
    with dg.DagsterInstance.get() as instance:
        types = [daemon.daemon_type() for daemon in DAEMON_TYPES]
        with daemon_controller_from_instance(
            instance,
            workspace_load_target=WorkspaceFileTarget(paths=[str(WORKSPACE)]),
            gen_daemons=lambda inst: [create_daemon_of_type(name, inst) for name in types],
        ) as controller:
            controller.check_daemon_loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
