"""Every bundled workflow opened in the real frontend (headless Chromium), checked and queued.

Runs with the frontend ComfyUI pins and with the newest one (COMFYUI_FRONTEND_LATEST = the
`static` folder of a newer comfyui-frontend-package, installed with pip --target by .ci/run).
"""
import json
import os
import shutil

import pytest

from conftest import require
from workflow_cases import FAST_WIDGETS, LOWERED_STOCK_NODES, TEXT_NODE_TYPES, WORKFLOW_NAMES, load_workflow

pytestmark = pytest.mark.slow  # the browser tier (README, 'Tests')

PREVIEW_WIDGET_NAME = "bagel_mot_text"
FRONTENDS = ["pinned", "latest"]

# Loads a workflow, reports node types the frontend does not know and widget values that did not
# survive loading (a count or type mismatch shifts or drops values), then lowers the sampler
# settings and queues it, capturing the /prompt answer (app.queuePrompt's return value is not reliable).
LOAD_AND_CHECK_JS = """
const [workflow, fast, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const loweredStock = arguments.length > 3 ? arguments[2] : [];
(async () => {
  const app = window.comfyAPI.app.app;
  const registered = window.LiteGraph.registered_node_types;
  const missing = workflow.nodes.map((n) => n.type).filter((t) => !(t in registered));
  await app.loadGraphData(structuredClone(workflow), true, true, null);
  const serialized = app.graph.serialize();
  const mismatches = [];
  for (const original of workflow.nodes) {
    const loaded = serialized.nodes.find((n) => n.id === original.id);
    const got = JSON.stringify(loaded?.widgets_values ?? []);
    const want = JSON.stringify(original.widgets_values ?? []);
    if (got !== want) mismatches.push(`${original.type} #${original.id}: ${got} != ${want}`);
  }
  for (const node of app.graph._nodes ?? app.graph.nodes) {
    if (!node.type.startsWith("BagelMoT") && !loweredStock.includes(node.type)) continue;
    for (const widget of node.widgets ?? []) {
      if (widget.name in fast) widget.value = fast[widget.name];
    }
  }
  window.__bagel = { answer: null, finished: null, errors: [] };
  const api = window.comfyAPI.api.api;
  for (const kind of ["execution_success", "execution_error", "execution_interrupted"]) {
    api.addEventListener(kind, (event) => { window.__bagel.finished = kind; window.__bagel.errors.push(event.detail); });
  }
  const original = api.queuePrompt.bind(api);
  api.queuePrompt = async (...args) => {
    try { window.__bagel.answer = await original(...args); }
    catch (error) { window.__bagel.answer = { error: String(error?.message ?? error), detail: error?.response }; }
    return window.__bagel.answer;
  };
  await app.queuePrompt(0, 1);
  done({ missing, mismatches });
})().catch((error) => done({ exception: String(error?.stack ?? error) }));
"""

RESULT_JS = """
const app = window.comfyAPI.app.app;
const texts = {};
for (const node of app.graph._nodes ?? app.graph.nodes) {
  const widget = (node.widgets ?? []).find((w) => w.name === arguments[0]);
  if (widget) texts[node.type] = widget.value;
}
return { state: window.__bagel, texts };
"""


def _frontend_root(which: str) -> str | None:
    if which == "pinned":
        return None
    root = os.environ.get("COMFYUI_FRONTEND_LATEST", "")
    require(bool(root) and os.path.isfile(os.path.join(root, "index.html")),
            f"the newest-frontend browser tests need COMFYUI_FRONTEND_LATEST = the 'static' folder of the newest "
            f"comfyui-frontend-package (got {root!r}). Provide it with: python -m pip install --no-deps --target "
            f"/tmp/frontend-latest comfyui-frontend-package && export "
            f"COMFYUI_FRONTEND_LATEST=/tmp/frontend-latest/comfyui_frontend_package/static (.ci/run does this)")
    return root


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "the browser tests need selenium: python -m pip install -r requirements-test.txt")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    require(bool(chromium and driver_path), "the browser tests need chromium and chromedriver on PATH (Debian/Ubuntu: "
                                            "apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


def _open_frontend(browser, server):
    server.client.request("/settings/Comfy.TutorialCompleted", True)
    browser.get(server.url)
    browser.set_script_timeout(120)
    # Node types are registered after the graph exists; wait for a core type to be registered, and for the canvas
    # (queueing a prompt before it exists fails in the frontend with "getCanvas: canvas is null").
    ready = ("return !!(window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas?.canvas"
             " && window.comfyAPI.api.api.clientId"
             " && 'SaveImage' in (window.LiteGraph?.registered_node_types ?? {}))")
    _poll(browser, ready, 90, "the frontend did not finish loading")


def _poll(browser, script, timeout, message, *args):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(message)


@pytest.mark.parametrize("which", FRONTENDS)
def test_workflows_load_and_run_in_the_frontend(browser, start_comfy, which):
    server = start_comfy(_frontend_root(which))
    _open_frontend(browser, server)
    for name in WORKFLOW_NAMES:
        workflow = load_workflow(name)
        report = browser.execute_async_script(LOAD_AND_CHECK_JS, workflow, FAST_WIDGETS, LOWERED_STOCK_NODES)
        assert "exception" not in report, f"{name}: {report}"
        assert not report["missing"], f"{name}: missing node types {report['missing']}"
        assert not report["mismatches"], f"{name}: widget values changed on load: {report['mismatches']}"
        _poll(browser, "return window.__bagel.finished", 300, f"{name}: never finished")
        result = browser.execute_script(RESULT_JS, PREVIEW_WIDGET_NAME)
        state = result["state"]
        assert state["finished"] == "execution_success", f"{name}: {json.dumps(state)[:2000]}"
        assert state["answer"] and not state["answer"].get("error"), f"{name}: {state['answer']}"
        for node_type in {node["type"] for node in workflow["nodes"]} & TEXT_NODE_TYPES:
            assert result["texts"].get(node_type, "").strip(), f"{name}: no text shown on {node_type}"


COUNT_PREVIEWS_JS = """
window.__bagelPreviews = 0;
window.comfyAPI.api.api.addEventListener("b_preview", () => { window.__bagelPreviews += 1; });
"""


@pytest.mark.parametrize("which", FRONTENDS)
def test_live_previews_reach_the_frontend(browser, start_comfy, which):
    """With --preview-method auto the frontend receives a preview image per denoise step of the preview workflow."""
    server = start_comfy(_frontend_root(which), extra_args=("--preview-method", "auto"))
    _open_frontend(browser, server)
    browser.execute_script(COUNT_PREVIEWS_JS)
    name = "BAGEL-MoT Live Preview and Latent Upscale"
    report = browser.execute_async_script(LOAD_AND_CHECK_JS, load_workflow(name), FAST_WIDGETS)
    assert "exception" not in report and not report["missing"] and not report["mismatches"], report
    _poll(browser, "return window.__bagel.finished", 300, f"{name}: never finished")
    state = browser.execute_script(RESULT_JS, PREVIEW_WIDGET_NAME)["state"]
    assert state["finished"] == "execution_success", json.dumps(state)[:2000]
    assert browser.execute_script("return window.__bagelPreviews") == FAST_WIDGETS["steps"] - 1
