"""Progress bar, live previews and Cancel support for the long loops of the core (denoise steps, tokens).

Cancel is checked here on every step and token, never left to ComfyUI's progress hook: ComfyUI 0.3.64 called
the hook (whose server version raises on Cancel) on every update, but newer versions (0.33) call it only on
the first and last update, with a preview, or after 0.1 s and 0.5 % of progress.
"""
import comfy.latent_formats
import comfy.model_management
import comfy.utils
import latent_preview

PREVIEW_FORMAT = "JPEG"  # what ComfyUI's own samplers send


def flux_previewer():
    """ComfyUI's previewer for FLUX latents under the current preview method (the server's --preview-method, or
    what the prompt asked for on ComfyUI versions that take it from the prompt), None when previews are off.
    latent2rgb uses the FLUX RGB factors, taesd the FLUX tiny autoencoder taef1 from models/vae_approx: BAGEL
    denoises FLUX autoencoder latents scaled like ComfyUI's FLUX latent format, so both apply as is."""
    return latent_preview.get_previewer(comfy.model_management.get_torch_device(), comfy.latent_formats.Flux())


def stop_if_cancelled() -> None:
    """Raises ComfyUI's InterruptProcessingException when the user pressed Cancel (and clears the flag)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class NodeProgress:
    """One ComfyUI progress bar for a node that runs `jobs` core calls in a row.

    The core calls `callback(stage, step, total)` once per denoise step ("denoise") and once per
    generated token ("text"). Each call first checks ComfyUI's interrupt flag, so Cancel stops the
    run within one step or token; the exception is never caught here. With `previews`, `preview()` gives
    the core a function that turns the step's predicted latent into ComfyUI's preview image, which the
    next progress update carries to the browser; it is None when the preview method is none, so the core
    keeps no latents and nothing is decoded for previews.
    """

    def __init__(self, jobs: int = 1, previews: bool = False):
        self.jobs = max(1, int(jobs))
        self.bar = comfy.utils.ProgressBar(self.jobs)
        self.previewer = flux_previewer() if previews else None
        self._pending_preview = None

    def preview(self):
        if self.previewer is None:
            return None

        def show(step: int, total: int, x0) -> None:
            stop_if_cancelled()  # no preview decoding for a run that is being cancelled
            self._pending_preview = self.previewer.decode_latent_to_preview_image(PREVIEW_FORMAT, x0)

        return show

    def callback(self, job_index: int = 0):
        def report(stage: str, step: int, total: int) -> None:
            stop_if_cancelled()
            total = max(1, int(total))
            done_in_job = min(max(int(step), 0), total)
            preview, self._pending_preview = self._pending_preview, None
            # Stages have different lengths (tokens, then steps); the bar shows the current
            # stage of the current job scaled onto all jobs.
            self.bar.update_absolute(job_index * total + done_in_job, self.jobs * total, preview)

        return report
