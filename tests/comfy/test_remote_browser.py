"""The remote warnings in the real frontend (headless Chromium, pinned and newest frontend): a remote workflow
whose step_cache the server cannot apply shows the warning on the Text to Image node."""
import copy
import json
import sys
from pathlib import Path

import pytest

from test_browser import FRONTENDS, LOAD_AND_CHECK_JS, _frontend_root, _open_frontend, _poll, browser  # noqa: F401
from workflow_cases import FAST_WIDGETS, load_workflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "remote"))
from fake_vllm_omni import FakeVllmOmni  # noqa: E402

pytestmark = pytest.mark.slow  # the browser tier (README, 'Tests')

WARNING_WIDGET_JS = """
const app = window.comfyAPI.app.app;
const node = (app.graph._nodes ?? app.graph.nodes).find((n) => n.type === "BagelMoTTextToImage");
const widget = (node?.widgets ?? []).find((w) => w.name === "bagel_mot_warnings");
return { state: window.__bagel, warning: widget?.value ?? null,
         saved: JSON.stringify(app.graph.serialize().nodes.find((n) => n.type === "BagelMoTTextToImage").widgets_values) };
"""


def remote_workflow(url: str) -> dict:
    workflow = copy.deepcopy(load_workflow("BAGEL-MoT Text to Image"))
    loader = next(node for node in workflow["nodes"] if node["type"] == "BagelMoTModelLoader")
    loader.update(type="BagelMoTRemoteModel", widgets_values=[url, "", 60, 2])
    loader["properties"]["Node name for S&R"] = "BagelMoTRemoteModel"
    generate = next(node for node in workflow["nodes"] if node["type"] == "BagelMoTTextToImage")
    generate["widgets_values"][-1] = "taylor"  # step_cache: the server cannot apply it
    return workflow


@pytest.mark.parametrize("which", FRONTENDS)
def test_remote_warning_is_shown_on_the_node(browser, start_comfy, which):  # noqa: F811
    server = start_comfy(_frontend_root(which))
    with FakeVllmOmni() as fake:
        _open_frontend(browser, server)
        workflow = remote_workflow(fake.url)
        report = browser.execute_async_script(LOAD_AND_CHECK_JS, workflow, FAST_WIDGETS)
        assert "exception" not in report and not report["missing"] and not report["mismatches"], report
        _poll(browser, "return window.__bagel.finished", 300, "the remote workflow never finished")
        result = _poll(browser, f"const r = (() => {{ {WARNING_WIDGET_JS} }})(); return r.warning ? r : null;", 60,
                       "no warning widget appeared on the Text to Image node")
    assert result["state"]["finished"] == "execution_success", json.dumps(result["state"])[:2000]
    assert "step_cache='taylor' is not applied" in result["warning"]
    assert "is not applied" not in result["saved"]  # display only: not saved into the workflow
    assert fake.requests and fake.requests[0]["fields"]["width"] == FAST_WIDGETS["width"]
