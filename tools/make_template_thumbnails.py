"""Draws the template-browser thumbnail of every bundled workflow: the graph as ComfyUI's frontend draws it.

ComfyUI's template browser (Workflow > Browse Templates > Custom Nodes > this pack) shows ``<name>.jpg`` next to
``<name>.json`` in the pack's workflow folder. This starts ComfyUI in a temporary folder (the pack linked in, a tiny
random checkpoint under the name the workflows select, so the loader shows it as a user would see it), opens the
frontend in headless Chromium, loads each workflow, fits it into view and saves a JPEG of that part of the screen.
Run it again after changing a workflow:

    python tools/make_template_thumbnails.py --comfyui /path/to/ComfyUI [--front-end-root DIR] [--only NAME]

With ``--graph-png PATH --only NAME`` it saves that workflow's graph at full size instead (the README's pictures).

Needs selenium (requirements-test.txt) and Chromium with chromedriver from your OS.
"""
import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from comfy_http import ComfyClient

PACK_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_ROOT))
from bagel_model import make_test_checkpoint  # noqa: E402  (the pack root is not on sys.path before)

WORKFLOW_DIR = PACK_ROOT / "workflows"
PACK_FOLDER_NAME = "ComfyUI-BagelMoT"
MODEL_NAME = "BAGEL-7B-MoT"  # the folder the bundled workflows select
WINDOW = (2400, 2000)  # large enough to draw every bundled graph at full size, away from the menus at the edges
THUMBNAIL = (640, 480)  # 4:3, the shape of the template browser's cards
MARGIN = 32  # graph units around the nodes
MIN_SCALE = 0.7
# Frontend settings that keep the first-run tour and the canvas overlays (minimap, zoom menu) out of the picture.
HIDDEN_OVERLAYS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasMenu": False}  # LiteGraph draws nodes without their text below about 0.6

# Loads a workflow (without its saved view), then scales and moves the canvas so that the graph sits in the
# middle of the window at full size (smaller only if it does not fit); returns the graph's rectangle in page
# pixels once the frontend has drawn it.
FIT_JS = """
const [workflow, margin, minScale, done] = arguments;
const frames = (n) => new Promise((r) => { const step = () => (n-- > 0 ? requestAnimationFrame(step) : r()); step(); });
(async () => {
  const app = window.comfyAPI.app.app;
  const graph = structuredClone(workflow);
  if (graph.extra) delete graph.extra.ds;
  await app.loadGraphData(graph, true, true, null);
  await frames(3);
  const nodes = app.graph._nodes ?? app.graph.nodes;
  const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const node of nodes) {
    x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - title);
    x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
  }
  [x0, y0, x1, y1] = [x0 - margin, y0 - margin, x1 + margin, y1 + margin];
  const canvas = app.canvas.canvas.getBoundingClientRect();
  const scale = Math.max(minScale, Math.min(1, (canvas.width - 400) / (x1 - x0), (canvas.height - 300) / (y1 - y0)));
  const [w, h] = [(x1 - x0) * scale, (y1 - y0) * scale];
  const left = (canvas.width - w) / 2, top = (canvas.height - h) / 2;  // in the canvas element
  const ds = app.canvas.ds;
  ds.scale = scale;
  ds.offset[0] = left / scale - x0;  // screen = (graph + offset) * scale
  ds.offset[1] = top / scale - y0;
  app.canvas.setDirty(true, true);
  await frames(3);
  await new Promise((r) => setTimeout(r, 400));
  done({rect: {x: canvas.left + left, y: canvas.top + top, width: w, height: h}, scale: ds.scale,
        offset: [ds.offset[0], ds.offset[1]]});
})().catch((error) => done({exception: String(error?.stack ?? error)}));
"""
READY_JS = ("return !!(window.comfyAPI?.app?.app?.graph && window.comfyAPI.api.api.clientId"
            " && 'BagelMoTModelLoader' in (window.LiteGraph?.registered_node_types ?? {}))")


def prepare_base(base: Path) -> None:
    """The pack, a tiny random checkpoint named like the real one, and a labelled input picture for Load Image."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    make_test_checkpoint(base / "models" / "bagel" / MODEL_NAME, "tiny")
    (base / "input").mkdir()
    picture = Image.new("RGB", (384, 256), (92, 96, 104))
    ImageDraw.Draw(picture).text((150, 120), "your image", fill=(235, 235, 235))
    picture.save(base / "input" / "example.png")


def start_comfyui(comfyui: Path, base: Path, front_end_root: str | None):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(base), "--database-url", "sqlite:///:memory:"]
    if front_end_root:
        command += ["--front-end-root", front_end_root]
    log = open(base / "comfyui.log", "w")
    process = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    client = ComfyClient(f"http://127.0.0.1:{port}")
    client.wait_until_ready(process=process)
    for setting, value in HIDDEN_OVERLAYS.items():
        client.request(f"/settings/{setting}", value)
    return process, client


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise SystemExit("Chromium and chromedriver are needed (e.g. apt install chromium chromium-driver).")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(120)
    return driver


def wait_for(driver, script: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise TimeoutError("the frontend did not finish loading")
        time.sleep(0.25)


def fitted_graph(driver, workflow: dict) -> tuple[Image.Image, dict]:
    """A screenshot with the graph fitted into view, and the graph's rectangle in it."""
    result = driver.execute_async_script(FIT_JS, workflow, MARGIN, MIN_SCALE)
    if "exception" in result:
        raise RuntimeError(result["exception"])
    return Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), result["rect"]


def graph_picture(driver, workflow: dict) -> Image.Image:
    """The graph at the size the frontend drew it (for documentation)."""
    screen, rect = fitted_graph(driver, workflow)
    return screen.crop(tuple(round(v) for v in (rect["x"], rect["y"], rect["x"] + rect["width"],
                                                 rect["y"] + rect["height"])))


def thumbnail(driver, workflow: dict) -> Image.Image:
    screen, rect = fitted_graph(driver, workflow)
    # Widen the graph's rectangle to the card's shape around its centre, then scale it to the card.
    width = max(rect["width"], rect["height"] * THUMBNAIL[0] / THUMBNAIL[1])
    height = width * THUMBNAIL[1] / THUMBNAIL[0]
    cx, cy = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
    box = tuple(round(v) for v in (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2))
    return screen.crop(box).resize(THUMBNAIL, Image.LANCZOS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI folder (the one with main.py)")
    parser.add_argument("--front-end-root", help="a frontend 'static' folder (default: the one ComfyUI pins)")
    parser.add_argument("--only", action="append", help="workflow name(s) to redraw (default: all)")
    parser.add_argument("--graph-png", type=Path,
                        help="instead of thumbnails, save the one --only workflow's graph at full size here "
                             "(the README's pictures in docs/images)")
    args = parser.parse_args()
    if args.graph_png and len(args.only or []) != 1:
        parser.error("--graph-png draws one workflow: name it with a single --only")
    names = args.only or sorted(path.stem for path in WORKFLOW_DIR.glob("*.json"))
    with tempfile.TemporaryDirectory(prefix="bagel-thumbnails-") as tmp:
        base = Path(tmp)
        prepare_base(base)
        process, client = start_comfyui(args.comfyui.resolve(), base, args.front_end_root)
        driver = open_browser()
        try:
            driver.get(client.base_url)
            wait_for(driver, READY_JS, 120)
            if args.graph_png:
                workflow = json.loads((WORKFLOW_DIR / f"{names[0]}.json").read_text(encoding="utf-8"))
                graph_picture(driver, workflow).save(args.graph_png, optimize=True)
                print(f"wrote {args.graph_png}")
                names = []
            for name in names:
                image = thumbnail(driver, json.loads((WORKFLOW_DIR / f"{name}.json").read_text(encoding="utf-8")))
                image.save(WORKFLOW_DIR / f"{name}.jpg", quality=85, optimize=True)
                print(f"wrote {WORKFLOW_DIR / f'{name}.jpg'}")
        finally:
            driver.quit()
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
