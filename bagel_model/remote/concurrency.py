"""Runs the requests of a batch side by side, up to a limit, while the caller's thread watches for Cancel.

The caller's thread never blocks on the network: it waits on the workers in short slices and calls
``callback("request", finished, total)`` after each slice. An exception from the callback (ComfyUI's
interrupt) or from any request aborts every request in flight and is re-raised at once; worker threads end
on their own as their sockets are shut, so the caller is not held up by them.
"""
from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

from .transport import Aborter

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.2  # how often Cancel is checked while requests are in flight
STAGE = "request"


def run_concurrently(tasks: list[Callable[[Aborter], T]], limit: int, callback=None) -> list[T]:
    """Results in the order of ``tasks``; each task gets the batch's Aborter."""
    if not tasks:
        return []
    total = len(tasks)
    report = callback or (lambda stage, step, count: None)
    aborter = Aborter()
    pool = ThreadPoolExecutor(max_workers=max(1, min(int(limit), total)), thread_name_prefix="bagel-remote")
    futures: dict[Future, int] = {}
    results: list = [None] * total
    try:
        report(STAGE, 0, total)
        futures = {pool.submit(task, aborter): index for index, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()  # the first failure aborts the rest below
            report(STAGE, total - len(pending), total)
    except BaseException:
        aborter.abort()
        pool.shutdown(wait=False, cancel_futures=True)
        in_flight = sum(1 for future in futures if future.running())
        if in_flight:
            log.info("Aborted %d BAGEL server request(s) in flight.", in_flight)
        raise
    pool.shutdown(wait=True)
    return results
