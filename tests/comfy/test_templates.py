"""The bundled workflows look like ComfyUI's own templates: a thumbnail per workflow, served where the frontend asks
for it (<name>.jpg beside <name>.json) and shown in the template browser of both frontends; the registry metadata
(icon, platform classifiers) is what the Comfy Registry accepts."""
import os
import time
import tomllib
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from comfy_server import PACK_FOLDER_NAME, REPO_ROOT
from test_browser import _frontend_root, _open_frontend, browser  # noqa: F401  (the browser fixture)
from workflow_cases import WORKFLOW_DIR, WORKFLOW_NAMES

THUMBNAIL_SIZE = (640, 480)
REPOSITORY_RAW = "https://raw.githubusercontent.com/bagel-mot/ComfyUI-BagelMoT/main/"


def test_every_workflow_has_a_thumbnail():
    assert WORKFLOW_NAMES, f"no workflows in {WORKFLOW_DIR}"
    for name in WORKFLOW_NAMES:
        path = WORKFLOW_DIR / f"{name}.jpg"
        assert path.is_file(), f"{path} is missing: run tools/make_template_thumbnails.py"
        with Image.open(path) as picture:
            assert (picture.format, picture.size) == ("JPEG", THUMBNAIL_SIZE), path
            assert len(np.unique(np.asarray(picture.convert("L")))) > 8, f"{path} is blank"
    stale = {p.stem for p in WORKFLOW_DIR.glob("*.jpg")} - set(WORKFLOW_NAMES)
    assert not stale, f"thumbnails without a workflow: {stale}"


def test_registry_icon_and_platform_classifiers(comfyui_path):
    """Checked with ComfyUI's own pyproject parser (comfy_config), which drops every accelerator classifier when one
    of them is not a name the registry knows."""
    from comfy_config.config_parser import (validate_and_extract_accelerator_classifiers,
                                            validate_and_extract_os_classifiers)

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    classifiers = project["project"]["classifiers"]
    assert set(validate_and_extract_accelerator_classifiers(classifiers)) == {
        "GPU :: NVIDIA CUDA", "GPU :: Intel Arc", "GPU :: Apple Metal"}
    assert validate_and_extract_os_classifiers(classifiers) == ["OS Independent"]  # CPUs: any OS
    icon = project["tool"]["comfy"]["Icon"]
    assert icon.startswith(REPOSITORY_RAW), icon
    path = REPO_ROOT / icon.removeprefix(REPOSITORY_RAW)
    assert path.is_file(), f"the icon URL names {path}, which is not in the repository"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width == picture.height <= 400


def test_thumbnails_are_served_where_the_frontend_asks(server):
    assert sorted(server.client.get("/workflow_templates")[PACK_FOLDER_NAME]) == WORKFLOW_NAMES
    for name in WORKFLOW_NAMES:
        url = f"{server.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{urllib.parse.quote(name)}.jpg"
        with urllib.request.urlopen(url, timeout=30) as answer:  # raises on 404
            assert answer.status == 200 and answer.headers["Content-Type"] == "image/jpeg", name
            assert answer.read() == (WORKFLOW_DIR / f"{name}.jpg").read_bytes(), name


# Opens the template browser, picks this pack's category and returns, per card, its title, description and
# whether its picture loaded (the frontend fetches <name>.jpg and shows a fallback when that fails).
SHOW_PACK_TEMPLATES_JS = """
const [pack, done] = arguments;
(async () => {
  await window.comfyAPI.app.app.extensionManager.command.execute("Comfy.BrowseTemplates");
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 80; i++) {
    const entry = Array.from(document.querySelectorAll("li, button, a, [role=option], [role=button]"))
      .find((el) => el.textContent.trim() === pack);
    if (entry) { entry.click(); done(true); return; }
    await sleep(250);
  }
  done(false);
})();
"""
# The card of one workflow, scrolled into view: the frontend loads a card's picture only while the card is visible
# (1.27 also drops it again once scrolled away; newer ones put no <img> in a card until it is near the view), so
# each card is checked while it is on screen; a card without its picture yet is scrolled to and asked again.
CARD_JS = """
const img = Array.from(document.querySelectorAll("img")).find((el) => el.alt === arguments[0]);
if (!img) {
  const title = Array.from(document.querySelectorAll("h3")).find((el) => el.textContent.trim() === arguments[0]);
  if (title) title.scrollIntoView({block: "center"});
  return null;
}
let card = img;
while (card.parentElement && !card.querySelector("h3")) card = card.parentElement;
card.scrollIntoView({block: "center"});
return {loaded: img.complete && img.naturalWidth > 0, src: img.currentSrc,
        title: card.querySelector("h3")?.textContent.trim() ?? "",
        description: card.querySelector("p")?.textContent.trim() ?? ""};
"""


def _card(browser, name: str, timeout: float = 30) -> dict | None:
    deadline = time.monotonic() + timeout
    card = browser.execute_script(CARD_JS, name)
    while (card is None or not card["loaded"]) and time.monotonic() < deadline:
        time.sleep(0.25)
        card = browser.execute_script(CARD_JS, name)
    return card


@pytest.mark.slow  # the browser tier (README, 'Tests')
@pytest.mark.parametrize("which", ["pinned", "latest"])
def test_template_browser_lists_the_workflows_with_thumbnails(browser, start_comfy, which):
    server = start_comfy(_frontend_root(which))
    _open_frontend(browser, server)
    assert browser.execute_async_script(SHOW_PACK_TEMPLATES_JS, PACK_FOLDER_NAME), \
        f"no '{PACK_FOLDER_NAME}' entry in the template browser"
    for name in WORKFLOW_NAMES:
        card = _card(browser, name)
        assert card is not None, f"{name}: no card in the template browser"
        assert card["loaded"], f"{name}: its thumbnail did not load ({card['src']!r})"
        if os.environ.get("BAGEL_SAVE_TEMPLATE_BROWSER"):  # to look at what a user sees
            browser.save_screenshot(os.path.join(os.environ["BAGEL_SAVE_TEMPLATE_BROWSER"], f"templates-{which}.png"))
        assert card["title"] == name, card  # the frontends title a custom node's template by its file name
        if card["description"]:  # frontend 1.27 prints one under it, derived from the name; 1.49 and 1.58 do not
            assert card["description"] == name.replace("_", " ").replace("-", " ").strip(), card
