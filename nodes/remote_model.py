"""BAGEL-MoT Remote Model node: a vLLM-Omni BAGEL server as a BAGEL_MOT_MODEL, so Text to Image, Edit,
Understand and Think run unchanged against it (bagel_model.remote does the HTTP)."""
import logging
import os

from bagel_model import BagelInputError
from bagel_model.remote import RemoteBagelClient, ServerAddress

from .model_handle import MODEL_TYPE

logger = logging.getLogger(__name__)

API_KEY_ENV = "BAGEL_MOT_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8091"


class RemoteModelHandle:
    """The BAGEL_MOT_MODEL of a server: no weights here, so nothing for ComfyUI's memory manager to move."""

    def __init__(self, client: RemoteBagelClient):
        self.client = client

    def ready_pipeline(self, *task, **sizes) -> RemoteBagelClient:
        """Same call as the local handle's; the task and sizes it describes size local memory, of which a
        server needs none here."""
        return self.client

    def __repr__(self) -> str:  # shown in ComfyUI's error reports: the server, never the key
        return f"BagelMoTRemoteModel(server={self.client.server!r})"


def _url_problem(server_url) -> str | None:
    if server_url is None:
        return None
    try:
        ServerAddress.parse(server_url)
    except BagelInputError as exc:
        return str(exc)
    return None


class BagelMoTRemoteModel:
    DESCRIPTION = (
        "Uses a vLLM-Omni server running BAGEL-7B-MoT ('vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni') instead "
        "of a local checkpoint: no local VRAM needed, and the images of a batch go out as concurrent requests. "
        "Results follow the server's sampler, so they differ from the local loader's (see README)."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("bagel_model",)
    FUNCTION = "connect"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "server_url": ("STRING", {
                    "default": DEFAULT_URL,
                    "tooltip": "Root URL of the vLLM-Omni server (the host and --port it was started with)."}),
            },
            "optional": {
                "api_key": ("STRING", {
                    "default": "",
                    "tooltip": f"Key of a server started with --api-key. Empty: read {API_KEY_ENV} from ComfyUI's "
                               "environment (recommended: a key typed here is saved in the workflow and in the "
                               "metadata of every saved image)."}),
                "timeout": ("INT", {
                    "default": 600, "min": 5, "max": 86400,
                    "tooltip": "Seconds to wait for the server's answer to one request."}),
                "max_concurrent_requests": ("INT", {
                    "default": 4, "min": 1, "max": 64,
                    "tooltip": "How many images of a batch are sent at once (the server queues the rest)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, server_url=None):
        return _url_problem(server_url) or True

    def connect(self, server_url, api_key="", timeout=600, max_concurrent_requests=4):
        key = api_key.strip() or os.environ.get(API_KEY_ENV, "").strip() or None
        client = RemoteBagelClient(server_url, api_key=key, timeout=timeout,
                                   max_concurrent_requests=max_concurrent_requests)
        logger.info("BAGEL-MoT Remote Model: %s (%s, up to %d requests at once).", client.server,
                    "with API key" if key else "no API key", client.max_concurrent_requests)
        return (RemoteModelHandle(client),)


NODE_CLASS_MAPPINGS = {"BagelMoTRemoteModel": BagelMoTRemoteModel}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTRemoteModel": "BAGEL-MoT Remote Model (vLLM-Omni)"}
