"""What a Dagster user sees, checked in a real browser: `cpt-ui` on a materialised tiny lake, Debian's Chromium.

The corpus lake of conftest.py (real PDFs) is served by `cpt-ui` (`dagster dev`) on a fresh DAGSTER_HOME; the model
job (tiny Llama from a config, real tokenizer) is launched through the webserver, as a user's Launchpad run is, so
it carries a repository origin. Headless Chromium (apt's /usr/bin/chromium driven by playwright; no browser
download) then opens the pages a user judges a run by and asserts what must be there: the run under its job, the
eval table and chart on eval_report, check descriptions, a Launchpad field description. Screenshots are saved under
the test's tmp folder (and copied to CPT_SCREENS when set) for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cpt_assets.definitions import defs
from cpt_assets_tests.defs.test_model_assets import TINY_EVAL, TINY_GGUF, TINY_TRAINING

CHROMIUM = Path(os.environ.get("CPT_CHROMIUM", "/usr/bin/chromium"))
REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION = "cpt_assets"
VIEWPORT = {"width": 1440, "height": 1000}

# The whole model job, as the main job runs it (tiny model, bounded GGUF work).
MODEL_RUN_ASSETS = sorted(node.name for node in defs.resolve_job_def("model_job").graph.node_defs)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_location(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until the webserver answers and the code location has loaded (torch and friends import slowly)."""
    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
        "locationOrLoadError { __typename } } } } }"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"cpt-ui exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            entries = requests.post(f"{url}/graphql", json={"query": query}, timeout=5).json()["data"]
            entries = entries["workspaceOrError"]["locationEntries"]
            loaded = [e for e in entries if e["name"] == LOCATION and e["loadStatus"] == "LOADED"]
            if loaded:
                assert loaded[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", log.read_text()[-4000:]
                return
        except (requests.RequestException, KeyError, TypeError):
            pass
        time.sleep(2)
    pytest.fail(f"cpt-ui did not load {LOCATION} in {timeout} s:\n{log.read_text()[-4000:]}")


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    return requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30).json()


def wait_for_daemon(url: str, timeout: float = 120) -> None:
    """Until the daemon that dequeues runs reports healthy."""
    query = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = graphql(url, query)["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
        if any(s["daemonType"] == "QUEUED_RUN_COORDINATOR" and s["healthy"] for s in statuses):
            return
        time.sleep(2)


def wait_for_run(client, run_id: str, timeout: float = 420) -> str | None:
    from dagster_graphql import DagsterGraphQLClientError

    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            status = client.get_run_status(run_id).value
        except DagsterGraphQLClientError:
            status = None
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(3)
    return status


def steps_started(url: str, run_id: str) -> bool:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { stepStats { stepKey } } } }"
    return bool(graphql(url, query, {"id": run_id})["data"]["runOrError"].get("stepStats"))


@pytest.fixture(scope="module")
def ui(corpus_lake, tiny_model_dir, tmp_path_factory):
    """`cpt-ui` on the corpus lake, with the model job launched through it and finished."""
    from dagster_graphql import DagsterGraphQLClient

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install -y chromium` (scripts/setup.sh does it)")
    base = tmp_path_factory.mktemp("ui")
    home = base / "dagster_home"
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CPT_DATA_LAKE": str(corpus_lake.root),
        "CPT_SOURCES": str(corpus_lake.registry),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    log = base / "cpt-ui.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cpt_assets.cli import ui; sys.exit(ui())", "-h", "127.0.0.1",
             "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_location(url, process, log)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_config = {
            "ops": {
                "base_model": {"config": {"source": str(tiny_model_dir)}},
                "lora_adapter": {"config": TINY_TRAINING},
                "eval_report": {"config": TINY_EVAL},
                "gguf_model": {"config": TINY_GGUF},
            }
        }
        wait_for_daemon(url)
        # A second try only for a run the daemon could not start: on a busy machine its first contact with the code
        # server can time out ("Could not reach user code server"), which fails the run before any step.
        for attempt in (1, 2):
            run_id = client.submit_job_execution(
                "model_job", repository_location_name=LOCATION, run_config=run_config, asset_selection=MODEL_RUN_ASSETS
            )
            status = wait_for_run(client, run_id)
            if status == "SUCCESS" or attempt == 2 or steps_started(url, run_id):
                break
        assert status == "SUCCESS", f"model_job run {run_id} ended {status}:\n{log.read_text()[-6000:]}"
        yield {"url": url, "run_id": run_id, "screens": base / "screens", "log": log}
    finally:
        os.killpg(process.pid, signal.SIGINT)  # dagster dev shuts its children down on Ctrl-C
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the whole session: webserver, daemon, code server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, ui):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screenshot(page, ui, name: str, height: int | None = None) -> Path:
    """A screenshot of the window (Dagster scrolls inside it, so a tall page gets a taller window)."""
    if height:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_timeout(1000)
    ui["screens"].mkdir(exist_ok=True)
    path = ui["screens"] / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("CPT_SCREENS"):
        Path(os.environ["CPT_SCREENS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["CPT_SCREENS"]) / path.name)
    return path


def open_page(page, ui, path: str, ready_text: str) -> None:
    """Open a page, wait for `ready_text`, and dismiss Dagster's first-visit "Join the community" dialog."""
    page.goto(ui["url"] + path)
    page.get_by_text(ready_text).first.wait_for()
    page.wait_for_timeout(2500)  # lazy panels (metadata, plots) and the first-visit dialog arrive late
    if page.get_by_text("Join the Dagster community").count():
        page.get_by_text("Skip", exact=True).click()
        page.wait_for_timeout(300)


def no_raw_floats(text: str) -> list[str]:
    """Decimal numbers shown with more than 6 significant digits (15-16 digit floats are unreadable)."""
    return [n for n in re.findall(r"\d+\.\d+", text) if len(n.replace(".", "").lstrip("0")) > 6]


def test_the_jobs_runs_are_listed_under_the_job(page, ui):
    open_page(page, ui, f"/locations/{LOCATION}/jobs/model_job/runs", "model_job")
    page.get_by_text(ui["run_id"][:8]).first.wait_for()
    screenshot(page, ui, "model_job_runs")
    assert page.get_by_text("No runs found").count() == 0


def assert_tables_fit(page) -> None:
    """Every metadata table ends inside the visible metadata panel: nothing is cut off on the right."""
    tables = page.locator("td table").all()
    assert tables, "no metadata table on the page"
    # The metadata panel is clipped at the right edge of its Table/Plots toggle: a table past it is cut off.
    toggle = page.locator("button", has_text="Plots").first.bounding_box()
    assert toggle, "no Table/Plots toggle above the metadata"
    edge = toggle["x"] + toggle["width"]
    for table in tables:
        box = table.bounding_box()
        assert box and box["x"] + box["width"] <= edge + 1, (table.inner_text()[:80], box, edge)


def test_asset_graph_shows_every_stage(page, ui):
    open_page(page, ui, "/asset-groups", "Global asset lineage")
    screenshot(page, ui, "asset_graph")
    for group in ("corpus", "model", "evaluation", "export"):
        assert page.get_by_text(group, exact=True).count() >= 1, group
    open_page(page, ui, f"/locations/{LOCATION}/asset-groups/model", "lora_adapter")
    screenshot(page, ui, "asset_graph_model")
    assert page.get_by_text("base_model", exact=True).count() >= 1


def test_eval_report_shows_its_table_and_chart(page, ui):
    open_page(page, ui, "/assets/eval_report", "adapted_perplexity")
    page.get_by_text("model_comparison", exact=True).first.wait_for()
    screenshot(page, ui, "eval_report", height=2400)
    body = page.inner_text("body")
    assert not no_raw_floats(body), no_raw_floats(body)
    metrics = page.locator("tr", has=page.get_by_text("metrics", exact=True)).first
    assert "perplexity" in metrics.inner_text() and "BLEU" in metrics.inner_text()
    assert "general perplexity" in metrics.inner_text()  # the forgetting control, next to the domain figures
    assert_tables_fit(page)
    # The chart sits behind "Show Markdown" (Dagster 1.13); it must fit its dialog.
    page.set_viewport_size(VIEWPORT)
    page.locator("tr", has=page.get_by_text("model_comparison", exact=True)).get_by_text("Show Markdown").click()
    image = page.locator("img[src^='data:image/png']").first
    image.wait_for()
    page.wait_for_timeout(500)
    screenshot(page, ui, "eval_report_chart")
    width = image.evaluate("img => img.naturalWidth")
    dialog = page.locator(".bp5-dialog").first.evaluate("d => d.getBoundingClientRect().width")
    assert 0 < width <= dialog - 40, (width, dialog)


def test_checks_are_explained(page, ui):
    open_page(page, ui, "/assets/eval_report?view=checks", "adapted_perplexity_below_base")
    screenshot(page, ui, "eval_report_checks")
    assert page.get_by_text("test perplexity is below the base model", exact=False).count() >= 1
    open_page(page, ui, "/assets/gguf_model?view=checks", "gguf_loads_in_llama_cpp")
    page.get_by_text("gguf_loads_in_llama_cpp", exact=True).first.click()  # the page opens on the first check
    page.get_by_text("loads in llama.cpp", exact=False).first.wait_for()
    screenshot(page, ui, "gguf_model_checks")


def test_gguf_model_page_reads_well(page, ui):
    open_page(page, ui, "/assets/gguf_model", "gguf_model")
    screenshot(page, ui, "gguf_model", height=1600)
    assert page.get_by_text("F16 GGUF made by llama.cpp", exact=False).count() >= 1
    body = page.inner_text("body")
    assert "Q8_0" in body and not no_raw_floats(body), no_raw_floats(body)
    assert_tables_fit(page)


def test_model_version_shows_the_decision_and_the_registry(page, ui):
    open_page(page, ui, "/assets/model_version", "model_version")
    screenshot(page, ui, "model_version", height=1600)
    body = page.inner_text("body")
    assert "promoted" in body and "v1" in body
    assert not no_raw_floats(body), no_raw_floats(body)
    assert_tables_fit(page)


def test_launchpad_explains_a_knob(page, ui):
    """The config help beside the editor shows a /* description */ above an eval_report field."""
    open_page(page, ui, f"/locations/{LOCATION}/jobs/model_job/playground", "Launch Run")
    page.locator(".CodeMirror").first.wait_for()
    # CodeMirror renders only the lines in view, and eval_report's fields sit below the fold of the scaffold:
    # put the cursor on the line through the editor's own API, as a click on it would.
    found = page.evaluate(
        """() => {
            const cm = document.querySelector('.CodeMirror').CodeMirror;
            const lines = cm.getValue().split('\\n');
            const n = lines.findIndex(line => line.trim().startsWith('max_samples:'));
            if (n < 0) return false;
            cm.focus();
            cm.setCursor({line: n, ch: lines[n].indexOf('max_samples') + 2});
            cm.scrollIntoView(null, 200);
            return true;
        }"""
    )
    assert found, "the Launchpad scaffold has no max_samples line"
    page.wait_for_timeout(1000)
    screenshot(page, ui, "launchpad")
    lines = [line.strip() for line in page.inner_text("body").splitlines()]
    field = next(i for i, line in enumerate(lines) if line.startswith("max_samples?"))
    above = lines[field - 1]
    assert above.endswith("*/") and "One of the following" not in above, lines[field - 3 : field + 1]
