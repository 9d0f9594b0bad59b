"""Runs the core calls of one node and reports what the backend could not do as asked.

A remote backend (anything with ``run_concurrently``, i.e. bagel_model.remote.RemoteBagelClient) gets the
whole batch at once and sends it as concurrent requests; the bar then counts finished requests. A local
pipeline runs the items one after another with per-step progress, exactly as before.
"""
import logging

import comfy.model_management
import comfy.utils

from .progress import NodeProgress

logger = logging.getLogger(__name__)

# Key of the node's ui output read by js/bagel_mot_remote_warnings.js.
WARNINGS_KEY = "bagel_mot_warnings"


def run_jobs(pipeline, method: str, jobs: list[dict], previews: bool = False) -> list:
    """``getattr(pipeline, method)(**job)`` for each job; results in job order. ``previews``: locally, each
    call also gets the node's live-preview function (a server sends no intermediate latents)."""
    if hasattr(pipeline, "run_concurrently"):
        bar = comfy.utils.ProgressBar(len(jobs))

        def finished_requests(stage: str, done: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel aborts the batch
            bar.update_absolute(done, total)

        return pipeline.run_concurrently(method, jobs, finished_requests)
    progress = NodeProgress(len(jobs), previews=previews)
    call = getattr(pipeline, method)
    preview = {"preview": progress.preview()} if previews else {}
    return [call(**job, callback=progress.callback(index), **preview) for index, job in enumerate(jobs)]


def with_warnings(output, results):
    """The node's return value, plus the results' warnings (if any) as ui shown on the node."""
    warnings = list(dict.fromkeys(warning for result in results for warning in getattr(result, "warnings", ())))
    if not warnings:
        return output
    if isinstance(output, dict):
        return {**output, "ui": {**output.get("ui", {}), WARNINGS_KEY: warnings}}
    return {"ui": {WARNINGS_KEY: warnings}, "result": output}
