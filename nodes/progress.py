"""Progress bar and Cancel support for the long loops of the core (denoise steps, tokens)."""
import comfy.model_management
import comfy.utils


class NodeProgress:
    """One ComfyUI progress bar for a node that runs `jobs` core calls in a row.

    The core calls `callback(stage, step, total)` once per denoise step ("denoise") and once per
    generated token ("text"). Each call first checks ComfyUI's interrupt flag, so Cancel stops the
    run within one step; the exception is never caught here.
    """

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, int(jobs))
        self.bar = comfy.utils.ProgressBar(self.jobs)

    def callback(self, job_index: int = 0):
        def report(stage: str, step: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            total = max(1, int(total))
            done_in_job = min(max(int(step), 0), total)
            # Stages have different lengths (tokens, then steps); the bar shows the current
            # stage of the current job scaled onto all jobs.
            self.bar.update_absolute(job_index * total + done_in_job, self.jobs * total)

        return report
