"""Optional download of the official weights, only when the user switched it on in the loader.

An interrupted download is resumed: huggingface_hub continues its unfinished files and fetches the missing ones;
files it had finished but that are short or unreadable now (a copy cut off, a full disk) are deleted first so
that it fetches them again.
"""
import logging
import os
from pathlib import Path

import comfy.utils
from bagel_model.checkpoint.folder_check import describe_problems, incomplete_files

from .model_folders import HF_REPO_ID
from .progress import stop_if_cancelled

logger = logging.getLogger(__name__)


def _progress_tqdm_class(base):
    """A tqdm subclass that mirrors huggingface_hub's file counter onto ComfyUI's progress bar."""

    class ComfyProgressTqdm(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._comfy_bar = comfy.utils.ProgressBar(max(1, int(self.total or 1)))

        def update(self, n=1):
            result = super().update(n)
            stop_if_cancelled()  # checked here: newer ComfyUI calls its progress hook only now and then
            self._comfy_bar.update_absolute(int(self.n), max(1, int(self.total or 1)))
            return result

    return ComfyProgressTqdm


def _drop_damaged_files(target_dir: str) -> None:
    for name, problem in incomplete_files(target_dir).items():
        path = Path(target_dir) / name
        if problem != "missing" and path.is_file() and not name.endswith(".incomplete"):
            logger.warning("%s is %s; downloading it again.", path, problem)
            path.unlink()


def download_checkpoint(target_dir: str) -> str:
    """Downloads (or completes) HF_REPO_ID in target_dir and returns it; raises with a fix when impossible."""
    try:
        from huggingface_hub import snapshot_download
        from tqdm.auto import tqdm
    except ImportError as error:
        raise RuntimeError(
            f"'download_if_missing' needs the huggingface_hub package ({error}). Install it with "
            f"'python -m pip install huggingface_hub' in ComfyUI's Python, or download {HF_REPO_ID} "
            f"yourself into {target_dir}."
        ) from error
    if os.path.isdir(target_dir):
        logger.info("Completing the download of %s in %s (%s).", HF_REPO_ID, target_dir,
                    describe_problems(incomplete_files(target_dir)) or "checking every file")
        _drop_damaged_files(target_dir)
    else:
        logger.info("Downloading %s into %s (about 29 GB).", HF_REPO_ID, target_dir)
    os.makedirs(target_dir, exist_ok=True)
    snapshot_download(repo_id=HF_REPO_ID, local_dir=target_dir, tqdm_class=_progress_tqdm_class(tqdm))
    problems = incomplete_files(target_dir)
    if problems:
        raise RuntimeError(
            f"The download of {HF_REPO_ID} into {target_dir} finished, but the folder is still incomplete: "
            f"{describe_problems(problems)}. Check the free disk space and run again to resume it."
        )
    return target_dir
