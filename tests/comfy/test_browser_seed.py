"""In the real frontend, new Understand / Think nodes start with a fixed seed (their greedy result is cached and
does not re-run everything downstream on each queue), image nodes keep "randomize", and a saved workflow keeps
its saved choice. Runs with the pinned and the newest frontend, like test_browser.py."""
import pytest

from test_browser import FRONTENDS, _frontend_root, _open_frontend, browser  # noqa: F401 (browser: fixture)
from workflow_cases import load_workflow

pytestmark = pytest.mark.slow  # the browser tier (README, 'Tests')

NEW_NODES_JS = """
const app = window.comfyAPI.app.app;
const controls = {};
for (const type of arguments[0]) {
  const node = window.LiteGraph.createNode(type);
  app.graph.add(node);
  controls[type] = node.widgets.find((w) => w.name === "control_after_generate")?.value ?? null;
}
return controls;
"""

LOADED_CONTROL_JS = """
const [workflow, done] = [arguments[0], arguments[arguments.length - 1]];
const app = window.comfyAPI.app.app;
app.loadGraphData(structuredClone(workflow), true, true, null).then(() => {
  const think = (app.graph._nodes ?? app.graph.nodes).find((n) => n.type === "BagelMoTThink");
  done(think.widgets.find((w) => w.name === "control_after_generate").value);
});
"""


@pytest.mark.parametrize("which", FRONTENDS)
def test_greedy_text_nodes_start_with_a_fixed_seed(browser, start_comfy, which):  # noqa: F811
    server = start_comfy(_frontend_root(which))
    _open_frontend(browser, server)
    controls = browser.execute_script(NEW_NODES_JS, ["BagelMoTUnderstand", "BagelMoTThink", "BagelMoTTextToImage",
                                                     "BagelMoTEdit"])
    assert controls == {"BagelMoTUnderstand": "fixed", "BagelMoTThink": "fixed",
                        "BagelMoTTextToImage": "randomize", "BagelMoTEdit": "randomize"}
    workflow = load_workflow("BAGEL-MoT Think then Generate")
    think = next(node for node in workflow["nodes"] if node["type"] == "BagelMoTThink")
    think["widgets_values"][think["widgets_values"].index("fixed")] = "randomize"
    assert browser.execute_async_script(LOADED_CONTROL_JS, workflow) == "randomize"
