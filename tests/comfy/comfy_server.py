"""A throw-away ComfyUI server in a temporary base directory, with the pack linked in."""
import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image

from comfy_http import ComfyClient

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER_NAME = "ComfyUI-BagelMoT"
MAIN_MODEL_NAME = "BAGEL-7B-MoT"  # the name the bundled workflows select
EXTRA_MODEL_NAME = "BAGEL-extra-path"  # reachable only through extra_model_paths.yaml
EXAMPLE_IMAGE_SIZE = (96, 64)  # small LoadImage input: keeps edit runs short on the CPU
# ComfyUI 0.33 imports much more at start-up than 0.3.64; on a busy 2-core machine it once needed over 120 s.
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_base_dir(base: Path, checkpoint: Path) -> Path:
    """Base dir with the pack, a demo checkpoint under the real model's name, an example image.

    Returns the extra_model_paths.yaml that adds a second `bagel` root.
    """
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "models" / "bagel").mkdir(parents=True)
    (base / "models" / "bagel" / MAIN_MODEL_NAME).symlink_to(checkpoint, target_is_directory=True)
    extra_root = base / "extra_models" / "bagel_weights"
    extra_root.mkdir(parents=True)
    (extra_root / EXTRA_MODEL_NAME).symlink_to(checkpoint, target_is_directory=True)
    (base / "input").mkdir()
    Image.new("RGB", EXAMPLE_IMAGE_SIZE, (200, 120, 40)).save(base / "input" / "example.png")
    yaml_path = base / "extra_model_paths.yaml"
    yaml_path.write_text(f"bagel_test:\n  base_path: {base / 'extra_models'}\n  bagel: bagel_weights\n")
    return yaml_path


class ComfyServer:
    def __init__(self, comfyui_path: Path, base: Path, extra_paths_yaml: Path, front_end_root: str | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.comfyui_path = comfyui_path
        self.base = base
        self.port = free_port()
        self.log_path = base / f"comfyui-{self.port}.log"
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(base),
            "--output-directory", str(base / "output"), "--extra-model-paths-config", str(extra_paths_yaml),
            "--database-url", "sqlite:///:memory:",
        ]
        if front_end_root:
            command += ["--front-end-root", front_end_root]
        command += list(extra_args)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=comfyui_path, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ComfyClient(self.url)
        try:
            self.client.wait_until_ready(timeout=START_TIMEOUT_S, process=self.process)
        except Exception as error:
            self.stop()
            raise RuntimeError(f"ComfyUI did not start ({error}); log:\n{self.log_text()[-4000:]}") from None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
