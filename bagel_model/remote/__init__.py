"""Remote backend: the same BAGEL calls, run by a vLLM-Omni server (``vllm serve ByteDance-Seed/BAGEL-7B-MoT
--omni``) through its OpenAI-compatible chat endpoint. Standard library HTTP only.

    from bagel_model.remote import RemoteBagelClient
    client = RemoteBagelClient("http://gpu-box:8091", api_key=None, timeout=600, max_concurrent_requests=4)
    result = client.generate_image("a red fox", width=512, height=512, seed=1)
    results = client.run_concurrently("generate_image", [dict(prompt="a fox", seed=s) for s in range(8)])
"""
from .client import RemoteBagelClient, RemoteResult
from .errors import (BagelRemoteError, RemoteConnectionError, RemoteRequestRejected, RemoteResponseError,
                     RemoteServerError, RemoteTimeoutError, ServerAddress)
from .schema import SCHEMA_SOURCE, SCHEMA_VERSION

__all__ = ["RemoteBagelClient", "RemoteResult", "BagelRemoteError", "RemoteConnectionError", "RemoteTimeoutError",
           "RemoteRequestRejected", "RemoteServerError", "RemoteResponseError", "ServerAddress", "SCHEMA_VERSION",
           "SCHEMA_SOURCE"]
