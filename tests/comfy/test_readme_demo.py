"""The README's two set-up commands, run as written from ComfyUI/custom_nodes/ of a ComfyUI tree of their own
(this ComfyUI's code, fresh models/, input/, output/ and user/ folders, the pack linked in as custom_nodes/
ComfyUI-BagelMoT): command 1 starts ComfyUI, runs the bundled text-to-image workflow and saves an image; with no
checkpoint it first writes the random demo checkpoint, never under the real model's name, and says so; the re-run
line it prints works pasted into another folder. Command 2 installs and runs the tests (here: pytest only collects
them, and pip may not reach an index). The demo tells the truth about what it ran."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_server import REPO_ROOT
from demo_settings import lower_for_demo, shrink_input_images, text_cap, what_ran
from run_demo import startup_failure_report

PACK_CLONE_NAME = "ComfyUI-BagelMoT"


# A ComfyUI tree's own data folders; everything else is this ComfyUI's code, linked. main.py and folder_paths.py
# are copied: Python puts the script's real folder on sys.path, and folder_paths finds the base folder from its
# own real path.
OWN_FOLDERS = ("models", "custom_nodes", "input", "output", "user", "temp")
COPIED_FILES = ("main.py", "folder_paths.py")


def readme_command(number: int) -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n\s*(.+?)\n\s*```", section, flags=re.S)[number - 1].strip()


def readme_command_1() -> str:
    return readme_command(1)


def comfyui_tree(comfyui_path: Path, root: Path) -> Path:
    """root/ComfyUI: a ComfyUI of its own for the README commands; returns its custom_nodes folder."""
    tree = root / "ComfyUI"
    tree.mkdir(parents=True)
    for entry in comfyui_path.iterdir():
        if entry.name in COPIED_FILES:
            shutil.copyfile(entry, tree / entry.name)
        elif entry.name not in OWN_FOLDERS and not entry.name.startswith("."):
            (tree / entry.name).symlink_to(entry)
    for name in OWN_FOLDERS:
        (tree / name).mkdir()
    shutil.copyfile(comfyui_path / "input" / "example.png", tree / "input" / "example.png")
    (tree / "custom_nodes" / PACK_CLONE_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    return tree / "custom_nodes"


def as_typed(command: str, cwd: Path, tools: Path, timeout: float, **env) -> subprocess.CompletedProcess:
    """``command`` in bash from ``cwd``, with `python` = this test's Python and pip kept off any index."""
    tools.mkdir(exist_ok=True)
    (tools / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (tools / "python").chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if key != "COMFYUI_PATH"}
    environment.update(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", PWD=str(cwd), PIP_NO_INDEX="1",
                       PIP_DISABLE_PIP_VERSION_CHECK="1", **env)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_command_1_clones_only_once_and_runs_the_demo_each_time(tmp_path):
    """The one-liner itself, run twice from custom_nodes with `git` and `python` replaced by recorders: the second
    run must not clone again (a real `git clone` dies on an existing folder), and both runs install and run."""
    tools, custom_nodes, calls = tmp_path / "bin", tmp_path / "custom_nodes", tmp_path / "calls.txt"
    tools.mkdir()
    custom_nodes.mkdir()
    (tools / "git").write_text(f'#!/bin/sh\necho "git $*" >> {calls}\n'
                               f'if [ -e "{PACK_CLONE_NAME}" ]; then echo "fatal: destination path already exists" >&2;'
                               f' exit 128; fi\nmkdir "{PACK_CLONE_NAME}"\n')
    (tools / "python").write_text(f'#!/bin/sh\necho "python $*" >> {calls}\n')
    for tool in ("git", "python"):
        (tools / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    command = readme_command_1()
    for attempt in (1, 2):
        run = subprocess.run(["bash", "-c", command], cwd=custom_nodes, env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, (attempt, run.stderr)
    lines = calls.read_text().splitlines()
    assert [line for line in lines if line.startswith("git ")] == [
        f"git clone https://github.com/bagel-mot/{PACK_CLONE_NAME}"]
    runs = [line for line in lines if line.startswith("python ")]
    assert runs == [f"python -m pip install -r {PACK_CLONE_NAME}/requirements.txt",
                    f"python {PACK_CLONE_NAME}/tools/run_demo.py --comfyui .."] * 2


def _run_demo(comfyui_path, base, timeout=1200, env=None):
    return subprocess.run([sys.executable, "tools/run_demo.py", "--comfyui", str(comfyui_path),
                           "--base-directory", str(base)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _check_demo_report(report: str, comfyui: Path) -> None:
    demo = comfyui / "models" / "bagel" / "BAGEL-demo-random"
    assert f"on {demo} (ComfyUI start-up" in report and "images are noise" in report
    assert ("BagelMoTTextToImage (node 2): 256x256, 10 steps (the workflow file has 1024x1024, 50 steps; lowered "
            "for the demo)") in report
    assert f'download ByteDance-Seed/BAGEL-7B-MoT --local-dir "{comfyui / "models" / "bagel" / "BAGEL-7B-MoT"}"' \
        in report
    if shutil.which("hf") or (Path(sys.executable).parent / "hf").is_file():
        assert "install it with" not in report  # hf came with ComfyUI's requirements (0.33): nothing to install
    assert f"Delete the demo checkpoint: {demo}" in report and "> BAGEL-MoT Text to Image," in report
    saved = re.findall(r"^Saved (.+\.png) \((\d+)x(\d+)\)$", report, flags=re.M)
    assert saved, report[-3000:]
    for path, width, height in saved:
        assert path.startswith(str(comfyui / "output"))
        with Image.open(path) as image:
            assert image.size == (int(width), int(height)) == (256, 256)
            assert len(np.unique(np.asarray(image.convert("L")))) > 16  # a decoded image, not a flat fill


def test_readme_command_1_as_written_then_its_rerun_line_pasted_elsewhere(comfyui_path, tmp_path):
    custom_nodes = comfyui_tree(comfyui_path, tmp_path)
    comfyui = custom_nodes.parent
    first = as_typed(readme_command(1), custom_nodes, tmp_path / "bin", timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    demo = comfyui / "models" / "bagel" / "BAGEL-demo-random"
    assert sorted(p.name for p in (comfyui / "models" / "bagel").iterdir()) == [demo.name]
    assert f"writing a random demo checkpoint to {demo}" in first.stderr
    _check_demo_report(first.stderr, comfyui)
    rerun = first.stderr.split("Or run this demo again, now on the real weights at the workflow's own settings: ",
                               1)[1].splitlines()[0]
    assert rerun == f"{sys.executable} {REPO_ROOT / 'tools' / 'run_demo.py'} --comfyui {comfyui}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = as_typed(rerun, elsewhere, tmp_path / "bin", timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"using the random demo checkpoint written earlier: {demo}" in second.stderr
    _check_demo_report(second.stderr, comfyui)
    assert sorted(p.name for p in (comfyui / "models" / "bagel").iterdir()) == [demo.name]


def test_readme_command_2_as_written_finds_its_files_and_comfyui(comfyui_path, tmp_path):
    """pip installs requirements-test.txt (all present already; no index is asked) and pytest runs from the pack
    folder with COMFYUI_PATH=../.. meaning this tree's ComfyUI: collecting only, since the suite is what runs it."""
    custom_nodes = comfyui_tree(comfyui_path, tmp_path)
    run = as_typed(readme_command(2), custom_nodes, tmp_path / "bin", timeout=600,
                   PYTEST_ADDOPTS="--collect-only -q -p no:cacheprovider")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert re.search(r"^\d+ tests collected", output, flags=re.M), output[-3000:]
    assert "ComfyUI tiers not run" not in output and "deselected" not in output, output[-3000:]
    assert "test_input_guard.py::" in output  # the ComfyUI tiers are among them


def test_demo_shows_comfyui_log_and_fix_when_comfyui_cannot_start(comfyui_path, tmp_path):
    """ComfyUI 0.3.64 imports `requests` without listing it: hide it and check what the user is told, and that
    the re-run line it prints works pasted into another folder (it gets as far as starting ComfyUI again)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "requests.py").write_text("raise ModuleNotFoundError(\"No module named 'requests'\", name='requests')\n")
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "models" / "bagel" / "BAGEL-real").mkdir(parents=True)
    (base / "models" / "bagel" / "BAGEL-real" / "llm_config.json").write_text("{}")  # listed: no demo checkpoint
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    run = _run_demo(comfyui_path, base, timeout=300, env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback (most recent call last)" not in run.stderr.split("Last lines of ComfyUI's log")[0]
    assert "ComfyUI exited with code" in run.stderr and "Last lines of ComfyUI's log" in run.stderr
    assert "  | ModuleNotFoundError: No module named 'requests'" in run.stderr  # the log tail itself
    assert f"{sys.executable} -m pip install requests" in run.stderr
    again = run.stderr.split("then run the demo again: ", 1)[1].splitlines()[0]
    assert again == (f"{sys.executable} {REPO_ROOT / 'tools' / 'run_demo.py'} --comfyui {comfyui_path} "
                     f"--base-directory {base}")  # absolute: works from anywhere, clone or no clone
    pasted = subprocess.run(["bash", "-c", again], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert pasted.returncode == 1 and "ComfyUI exited with code" in pasted.stderr, pasted.stderr[-3000:]
    assert "has no main.py" not in pasted.stderr


def test_demo_lowering_and_report_go_by_input_names_for_any_node():
    """Stock nodes (EmptySD3LatentImage, KSampler) and the pack's alike; links and small values untouched; the
    report says what was submitted and, where lowered, what the workflow file has."""
    original = {
        "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "2": {"class_type": "KSampler", "inputs": {"steps": 30, "seed": 5, "latent_image": ["1", 0]}},
        "3": {"class_type": "BagelMoTSigmas", "inputs": {"steps": ["9", 0]}},
        "4": {"class_type": "BagelMoTEdit", "_meta": {"title": "Edit"},
              "inputs": {"output_size": "native", "width": 1024, "height": 1024, "steps": 50}},
        "5": {"class_type": "BagelMoTUnderstand", "inputs": {"max_new_tokens": 512}},
        "6": {"class_type": "ImageScale", "inputs": {"width": 128, "height": 128}},
    }
    object_info = {"BagelMoTEdit": {"input": {"required": {
        "output_size": [["native", "match_input", "custom"], {}]}}}}
    submitted = lower_for_demo(original, object_info)
    assert original["1"]["inputs"]["width"] == 1024  # the original prompt is left as it was
    assert submitted["1"]["inputs"] == {"width": 256, "height": 256, "batch_size": 1}
    assert submitted["2"]["inputs"]["steps"] == 10 and submitted["3"]["inputs"]["steps"] == ["9", 0]
    assert submitted["4"]["inputs"] == {"output_size": "custom", "width": 256, "height": 256, "steps": 10}
    assert submitted["6"] == original["6"]
    assert what_ran(submitted, original) == [
        "EmptySD3LatentImage (node 1): 256x256 (the workflow file has 1024x768; lowered for the demo)",
        "KSampler (node 2): 10 steps (the workflow file has 30 steps; lowered for the demo)",
        "Edit (node 4): output_size custom, 256x256, 10 steps (the workflow file has output_size native, 50 steps; "
        "lowered for the demo)",
        "BagelMoTUnderstand (node 5): at most 48 new tokens (the workflow file has at most 512 new tokens; lowered "
        "for the demo)",
        "ImageScale (node 6): 128x128",
    ]
    assert text_cap(submitted) == 48


def test_demo_input_images_are_scaled_copies_and_the_report_names_them(tmp_path):
    Image.new("RGB", (768, 512), (200, 120, 40)).save(tmp_path / "example.png")
    Image.new("RGBA", (600, 300), (0, 0, 0, 0)).save(tmp_path / "masked.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    original = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png", "upload": "image"}},
                "2": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
                "3": {"class_type": "BagelMoTEdit", "inputs": {"image": ["1", 0], "steps": 10}}}
    submitted = lower_for_demo(original, {})
    shrink_input_images(submitted, tmp_path, "BAGEL-demo-random")
    assert submitted["1"]["inputs"]["image"] == "BAGEL-demo-random/example-256x160.png"
    with Image.open(tmp_path / "BAGEL-demo-random" / "example-256x160.png") as copy_:
        assert copy_.size == (256, 160)
    with Image.open(tmp_path / "example.png") as kept:
        assert kept.size == (768, 512)
    assert submitted["2"] == original["2"] and submitted["3"] == original["3"]
    masked = {"1": {"class_type": "LoadImage", "inputs": {"image": "masked.png"}}}
    shrink_input_images(masked, tmp_path, "BAGEL-demo-random")
    with Image.open(tmp_path / masked["1"]["inputs"]["image"]) as copy_:  # sides of 16s, the mask kept
        assert copy_.size == (256, 128) and copy_.mode == "RGBA"
    assert what_ran(submitted, original)[0] == ("LoadImage (node 1): image BAGEL-demo-random/example-256x160.png "
                                                "(the workflow file has image example.png; lowered for the demo)")


def test_a_start_up_timeout_is_not_blamed_on_an_optional_module_comfyui_logs(tmp_path):
    log = tmp_path / "comfyui.log"
    log.write_text("[INFO] No OpenGL_accelerate module loaded: No module named 'OpenGL_accelerate'\n")
    report = startup_failure_report("ComfyUI did not answer within 300 s", log)
    assert "OpenGL_accelerate' which" not in report and "pip install OpenGL_accelerate" not in report
    assert "Fix: start ComfyUI by hand" in report
    log.write_text("Traceback (most recent call last):\nModuleNotFoundError: No module named 'yaml'\n")
    assert "-m pip install pyyaml" in startup_failure_report("ComfyUI exited with code 1 while starting", log)
