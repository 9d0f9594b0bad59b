"""Every way a remote call can fail gives a clear error naming the server and the fix, and leaks no key."""
import base64
import io
import logging
import socket

import pytest
from PIL import Image

from bagel_model import BagelError, BagelInputError
from bagel_model.remote import (RemoteBagelClient, RemoteConnectionError, RemoteRequestRejected,
                                RemoteResponseError, RemoteServerError, RemoteTimeoutError)
from fake_vllm_omni import FakeVllmOmni

SECRET = "sk-very-secret-4242"


def generate(url, **kwargs):
    return RemoteBagelClient(url, **kwargs).generate_image("a fox", width=64, height=64, steps=3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_refused_connection_says_nothing_listens_there():
    port = free_port()
    with pytest.raises(RemoteConnectionError, match=f"refused the connection: nothing listens on port {port}"):
        generate(f"http://127.0.0.1:{port}")


def test_unresolvable_host_is_unreachable():
    with pytest.raises(RemoteConnectionError, match=r"Cannot reach the server at http://no-such-host\.invalid:8091"):
        generate("http://no-such-host.invalid:8091")


def test_4xx_carries_the_servers_own_message(fake_server):
    fake_server.fail_with = (400, {"error": {"message": "Requested width=2048 exceeds the limit", "code": 400}})
    with pytest.raises(RemoteRequestRejected, match="HTTP 400.*Requested width=2048 exceeds the limit") as caught:
        generate(fake_server.url)
    assert caught.value.status == 400 and fake_server.url in str(caught.value)


def test_fastapi_validation_detail_and_wrong_path(fake_server):
    fake_server.fail_with = (422, {"detail": [{"loc": ["body", "seed"], "msg": "too big"}]})
    with pytest.raises(RemoteRequestRejected, match="HTTP 422.*too big"):
        generate(fake_server.url)
    with pytest.raises(RemoteRequestRejected, match="has no /v1/chat/completions"):
        generate(fake_server.url + "/somewhere")


def test_5xx_points_to_the_server_log(fake_server):
    fake_server.fail_with = (500, {"error": {"message": "CUDA out of memory", "code": 500}})
    with pytest.raises(RemoteServerError, match="HTTP 500\\): CUDA out of memory.*server's log"):
        generate(fake_server.url)


def test_timeout_says_which_setting_to_raise(fake_server):
    fake_server.hold_requests()
    with pytest.raises(RemoteTimeoutError, match="did not answer within 0.3 s. Raise 'timeout'"):
        generate(fake_server.url, timeout=0.3)


@pytest.mark.parametrize("body, expected", [
    (b"<html>login page</html>", "not JSON"),
    (b'{"object": "list", "data": []}', "no 'choices' list"),
    (b'{"choices": [{"message": {"role": "assistant", "content": "Image generation failed"}}]}',
     "holds no image_url.*Image generation failed"),
    (b'{"choices": [{"text": "completion-style"}]}', "no 'message' object"),
])
def test_wrong_shape_answers_are_explained(fake_server, body, expected):
    fake_server.answer_override = lambda parsed: body
    with pytest.raises(RemoteResponseError, match=expected) as caught:
        generate(fake_server.url)
    assert "vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni" in str(caught.value)


def test_non_png_image_is_refused(fake_server):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    fake_server.answer_override = lambda parsed: (
        '{"choices": [{"message": {"content": [{"type": "image_url", "image_url": {"url": "%s"}}]}}]}' % uri
    ).encode()
    with pytest.raises(RemoteResponseError, match="not a PNG"):
        generate(fake_server.url)


def test_errors_are_bagel_errors_so_callers_can_catch_one_type():
    for kind in (RemoteConnectionError, RemoteTimeoutError, RemoteRequestRejected, RemoteServerError,
                 RemoteResponseError):
        assert issubclass(kind, BagelError)


def test_no_credentials_in_logs_errors_or_repr(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeVllmOmni(api_key="right-key") as fake:
        client = RemoteBagelClient(fake.url, api_key=SECRET)
        with pytest.raises(RemoteRequestRejected, match="refused the API key") as caught:
            client.generate_image("a fox", width=64, height=64, step_cache="taylor")  # also logs a warning
        assert fake.headers[0]["Authorization"] == f"Bearer {SECRET}"  # it was sent, only to the server
        fake.fail_with = (500, {"error": {"message": "boom"}})
        client = RemoteBagelClient(fake.url, api_key="right-key")
        with pytest.raises(RemoteServerError) as server_error:
            client.generate_image("a fox", width=64, height=64)
    with pytest.raises(BagelInputError) as in_url:
        RemoteBagelClient(f"http://user:{SECRET}@127.0.0.1:8091")
    assert "step_cache" in caplog.text  # logging was captured
    for text in (caplog.text, str(caught.value), repr(client), str(server_error.value), str(in_url.value)):
        assert SECRET not in text and "right-key" not in text
