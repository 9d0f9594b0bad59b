"""Optional download of the official weights, only when the user switched it on in the loader."""
import logging
import os

import comfy.utils

from .model_folders import HF_REPO_ID, MARKER_FILE

logger = logging.getLogger(__name__)


def _progress_tqdm_class(base):
    """A tqdm subclass that mirrors huggingface_hub's file counter onto ComfyUI's progress bar."""

    class ComfyProgressTqdm(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._comfy_bar = comfy.utils.ProgressBar(max(1, int(self.total or 1)))

        def update(self, n=1):
            result = super().update(n)
            # ProgressBar.update runs ComfyUI's hook, which raises on Cancel.
            self._comfy_bar.update_absolute(int(self.n), max(1, int(self.total or 1)))
            return result

    return ComfyProgressTqdm


def download_checkpoint(target_dir: str) -> str:
    """Downloads HF_REPO_ID into target_dir and returns it; raises with a fix when impossible."""
    try:
        from huggingface_hub import snapshot_download
        from tqdm.auto import tqdm
    except ImportError as error:
        raise RuntimeError(
            f"'download_if_missing' needs the huggingface_hub package ({error}). Install it with "
            f"'python -m pip install huggingface_hub' in ComfyUI's Python, or download {HF_REPO_ID} "
            f"yourself into {target_dir}."
        ) from error
    logger.info("Downloading %s into %s (about 29 GB).", HF_REPO_ID, target_dir)
    os.makedirs(target_dir, exist_ok=True)
    snapshot_download(repo_id=HF_REPO_ID, local_dir=target_dir, tqdm_class=_progress_tqdm_class(tqdm))
    if not os.path.isfile(os.path.join(target_dir, MARKER_FILE)):
        raise RuntimeError(
            f"Download of {HF_REPO_ID} finished but {target_dir} has no {MARKER_FILE}; "
            "delete the folder and try again."
        )
    return target_dir
