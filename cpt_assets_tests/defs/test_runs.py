"""The main job through the instance under faults and concurrency: real CLI processes, daemon, run workers, SIGKILL.

Two small pdf_folder sources (two real PDFs each) keep a CLI run near a minute here; the reference splits come from
materialising the same assets one after another in this process. Each test starts its own fresh DAGSTER_HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from cpt_assets.defs.corpus.assets import clean_chunks, page_text, raw_pdfs
from cpt_assets.defs.corpus.splits import corpus_splits
from cpt_assets.defs.resources import LakeResource, SourcesResource

SOURCES = {
    "nist": ("nist", ("FIPS199.pdf", "SP800-145.pdf")),
    "ietf": ("ietf", ("rfc2119.txt.pdf", "rfc8174.txt.pdf")),
}
CLI_TIMEOUT_S = 900


def make_sources(base: Path, corpus_dir: Path, extra: str = "") -> Path:
    entries = []
    for name, (folder, files) in SOURCES.items():
        target = base / f"pdfs_{name}"
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy(corpus_dir / folder / file, target / file)
        entries.append(f"  - name: {name}\n    kind: pdf_folder\n    location: {target}\n")
    registry = base / "sources.yaml"
    registry.write_text("sources:\n" + "".join(entries) + extra, encoding="utf-8")
    return registry


def cli_env(base: Path, registry: Path) -> dict:
    return {
        **os.environ,
        "DAGSTER_HOME": str(base / "home"),
        "CPT_DATA_LAKE": str(base / "lake"),
        "CPT_SOURCES": str(registry),
        "CPT_MIRROR": "",
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }


def start_cli(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cpt_assets.cli", "--corpus-only", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_cli(env: dict, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> tuple[int, str]:
    process = start_cli(env, *args)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and the daemon it started: nothing outlives the test
        output, _ = process.communicate()
        pytest.fail(f"cpt-pipeline did not finish in {timeout_s} s:\n{output[-5000:]}")
    return process.returncode, output


def latest_splits(home: Path) -> dict:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("corpus_splits")).asset_materialization
        return {key: value.value for key, value in event.metadata.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir) -> dict:
    """Split hashes of a sequential in-process run over the same two sources."""
    base = tmp_path_factory.mktemp("reference")
    registry = make_sources(base, corpus_dir)
    resources = {"lake": LakeResource(root=str(base / "lake")), "sources": SourcesResource(registry=str(registry))}
    instance = dg.DagsterInstance.ephemeral()
    for key in SOURCES:
        assert dg.materialize(
            [raw_pdfs, page_text, clean_chunks], partition_key=key, resources=resources, instance=instance
        ).success
    result = dg.materialize([corpus_splits], resources=resources, instance=instance)
    event = result.asset_materializations_for_node("corpus_splits")[0]
    return event.metadata["split_hashes"].value


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_four_concurrent_launches_on_a_fresh_instance_all_succeed_with_the_sequential_splits(
    tmp_path, corpus_dir, reference
):
    env = cli_env(tmp_path, make_sources(tmp_path, corpus_dir))
    processes = [start_cli(env) for _ in range(4)]
    outputs = [process.communicate(timeout=CLI_TIMEOUT_S)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], "\n\n".join(o[-2000:] for o in outputs)
    assert latest_splits(tmp_path / "home")["split_hashes"] == reference
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        runs = instance.get_runs()
        assert all(run.is_success for run in runs)
        corpus = [run for run in runs if run.job_name == "corpus_job"]
        # the CLIs joined one backfill: one run per source, each with the code location's origin (UI job pages)
        assert sorted(run.tags["dagster/partition"] for run in corpus) == ["ietf", "nist"]
        assert len({run.tags["dagster/backfill"] for run in corpus}) == 1
        assert all(run.remote_job_origin.location_name == "cpt_assets" for run in runs)
        assert len(instance.get_backfills()) == 1
    assert not (tmp_path / "home" / "cpt-daemon.json").exists()  # the last CLI stopped the daemon


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_second_main_job_right_after_the_first_starts_its_own_daemon(tmp_path, corpus_dir):
    """The first CLI's daemon stops at its end, but its heartbeats look healthy for a minute: the second CLI must not
    take them for a foreign daemon (dagster dev) and wait on a queue nobody serves."""
    env = cli_env(tmp_path, make_sources(tmp_path, corpus_dir))
    first = run_cli(env)
    assert first[0] == 0, first[1][-3000:]
    code, output = run_cli(env, "--sources", "nist", timeout_s=300)
    assert code == 0, output[-3000:]
    assert "already serves this instance's run queue" not in output and "started the dagster daemon" in output


def _wait_for_started_worker(home: Path, step: str, timeout_s: float = 600) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not (home / "cpt-daemon.json").exists():  # the CLI has not created the instance yet
            time.sleep(0.5)
            continue
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
                if any(r.event_log_entry.dagster_event.step_key == step for r in records):
                    from cpt_assets.runner import _worker_pid

                    return run.run_id, _worker_pid(instance, run.run_id)
        time.sleep(0.5)
    raise AssertionError(f"no run reached {step} within {timeout_s} s")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_run_killed_with_sigkill_is_failed_on_the_next_start_and_its_rerun_reproduces_the_splits(
    tmp_path, corpus_dir, reference
):
    env = cli_env(tmp_path, make_sources(tmp_path, corpus_dir))
    home = tmp_path / "home"
    cli = start_cli(env)
    run_id, worker = _wait_for_started_worker(home, "page_text")
    # the whole machine's work dies at once: run worker, daemon (with its code server), CLI
    daemon = json.loads((home / "cpt-daemon.json").read_text())["pid"]
    for group in (daemon, cli.pid):
        os.killpg(group, signal.SIGKILL)
    cli.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and "Z" not in Path(f"/proc/{worker}/stat").read_text().split(") ")[-1][:1]:
        assert time.monotonic() < deadline, f"run worker {worker} survived SIGKILL of its process group"
        time.sleep(0.2)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # a zombie until the next start

    code, output = run_cli(env)
    assert code == 0, output[-3000:]
    assert f"run {run_id} was left STARTED by a process that died; marked failed" in output
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert latest_splits(home)["split_hashes"] == reference


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_missing_and_an_empty_source_fail_by_name_while_the_others_make_the_splits(tmp_path, corpus_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    extra = (
        f"  - name: gone\n    kind: pdf_folder\n    location: {tmp_path / 'no_such_folder'}\n"
        f"  - name: blank\n    kind: pdf_folder\n    location: {empty}\n"
    )
    env = cli_env(tmp_path, make_sources(tmp_path, corpus_dir, extra))
    code, output = run_cli(env)
    assert code == 1, output[-3000:]
    assert "corpus_job[gone] failed: step raw_pdfs: FileNotFoundError: source 'gone': PDF folder " in output
    assert f"check source_has_documents failed: [blank] source 'blank': no PDFs found in {empty}" in output
    assert "splits were made without blank, gone" in output
    assert "materialise raw_pdfs" not in output and "Traceback" not in output
    splits = latest_splits(tmp_path / "home")
    assert splits["sources"] == ["ietf", "nist"]
    assert sorted(splits["sources_missing"]) == ["blank", "gone"]
    assert sorted(splits["chunk_versions_used"]) == ["ietf", "nist"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cpt_ui_stops_within_seconds_on_sigterm(tmp_path):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).parents[2])}
    ui = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from cpt_assets.cli import ui; sys.exit(ui(['-p', '{port}']))"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline and ui.poll() is None, "the UI did not come up"
            time.sleep(1)
    started = time.monotonic()
    ui.send_signal(signal.SIGTERM)
    ui.wait(timeout=30)
    assert time.monotonic() - started < 10
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)


def test_the_daemon_stops_itself_once_no_cli_is_left(tmp_path):
    """A CLI that is killed cannot stop the daemon it started; the daemon notices and stops (no orphan left), also
    when it was started with SIGINT ignored (a CLI in a background job or under nohup passes that on)."""
    client = subprocess.Popen(["sleep", "2"])  # stands for a living CLI that then goes away
    (tmp_path / "cpt-daemon.json").write_text(json.dumps({"pid": 0, "clients": [client.pid], "env": {}}))
    watcher = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cpt_assets.daemon import watch_for_orphaning\n"
        "try:\n"
        f"    watch_for_orphaning(Path({str(tmp_path)!r}), check_s=0.1, grace_s=0.1)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped')\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", watcher],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a background job starts it
    )
    elapsed = time.monotonic() - started
    client.wait()
    assert done.stdout.strip() == "stopped", done.stderr[-2000:]
    assert 1.5 < elapsed < 20  # not while the CLI lived, and soon after it left


def test_the_daemon_reloads_its_workspace_without_starting_code_servers(tmp_path):
    """Dagster's daemon controller reloads its workspace every minute; from a python_module entry that starts a new
    code server (an import of the definitions) each time. The CLI's daemon serves one code server all its life: with
    the reload made to come every second, 12 seconds still show exactly one server start."""
    shutil.copy(Path(__file__).parents[2] / "dagster.yaml", tmp_path / "dagster.yaml")
    program = (
        "import os, signal, sys, threading\n"
        "import dagster._daemon.controller as controller\n"
        "controller.RELOAD_WORKSPACE_INTERVAL = 1\n"
        "controller.THREAD_CHECK_INTERVAL = 0.5\n"
        "from cpt_assets import daemon\n"
        "threading.Timer(12, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "sys.exit(daemon.main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("Started Dagster code server for module cpt_assets.definitions") == 1, output[-3000:]
    assert "Shutting down Dagster code server" in output  # stopped with the daemon, not left behind
