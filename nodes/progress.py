"""Progress bar, live previews and Cancel support for the long loops of the core (denoise steps, tokens)."""
import comfy.latent_formats
import comfy.model_management
import comfy.utils
import latent_preview

PREVIEW_FORMAT = "JPEG"  # what ComfyUI's own samplers send


def flux_previewer():
    """ComfyUI's previewer for FLUX latents under the server's --preview-method (latent2rgb with the FLUX RGB
    factors, or the FLUX tiny autoencoder taef1 from models/vae_approx for taesd), None when previews are off.
    BAGEL denoises FLUX autoencoder latents scaled like ComfyUI's FLUX latent format, so both apply as is."""
    return latent_preview.get_previewer(comfy.model_management.get_torch_device(), comfy.latent_formats.Flux())


class NodeProgress:
    """One ComfyUI progress bar for a node that runs `jobs` core calls in a row.

    The core calls `callback(stage, step, total)` once per denoise step ("denoise") and once per
    generated token ("text"). Each call first checks ComfyUI's interrupt flag, so Cancel stops the
    run within one step; the exception is never caught here. With `previews`, `preview()` gives the
    core a function that turns the step's predicted latent into ComfyUI's preview image, which the
    next progress update carries to the browser (None when the server's preview method is none, so
    the core computes nothing for previews).
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
            self._pending_preview = self.previewer.decode_latent_to_preview_image(PREVIEW_FORMAT, x0)

        return show

    def callback(self, job_index: int = 0):
        def report(stage: str, step: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            total = max(1, int(total))
            done_in_job = min(max(int(step), 0), total)
            preview, self._pending_preview = self._pending_preview, None
            # Stages have different lengths (tokens, then steps); the bar shows the current
            # stage of the current job scaled onto all jobs.
            self.bar.update_absolute(job_index * total + done_in_job, self.jobs * total, preview)

        return report
