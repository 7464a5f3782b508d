"""The openai backend against a real HTTP server on 127.0.0.1 (tests/chat_server.py)."""

from __future__ import annotations

import base64
import io
import socket
import time

import pytest
from PIL import Image

from captioner.backends import OpenAIBackendConfig, build_backend
from captioner.backends.base import Message
from captioner.errors import AuthError, BackendError, ConfigError, redact

try:
    from chat_server import Action, ChatServer
except ImportError:  # pragma: no cover - when tests/ is not on sys.path
    from tests.chat_server import Action, ChatServer

KEY_ENV = "DENSECAP_TEST_CHAT_KEY"
SECRET = "sk-test-secret-0123456789"


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


@pytest.fixture
def make_backend(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    made = []

    def make(server, **kw):
        kw.setdefault("backoff_base_s", 0.001)
        kw.setdefault("backoff_max_s", 0.01)
        kw.setdefault("timeout_s", 5.0)
        kw.setdefault("model", "test-vlm")
        cfg = OpenAIBackendConfig(base_url=server.base_url, api_key_env=KEY_ENV, **kw)
        b = build_backend(cfg)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _image(w, h, color=(200, 30, 60)):
    img = Image.new("RGB", (w, h), color)
    for x in range(0, w, 7):  # some structure so JPEG has work to do
        img.putpixel((x, (x * 3) % h), (0, 0, 0))
    return img


def _decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))
    img.load()
    return img


def _bodies_by_text(server):
    out = {}
    for r in server.requests:
        msgs = r.body["messages"]
        last = msgs[-1]["content"]
        text = last if isinstance(last, str) else "".join(p.get("text", "") for p in last if p["type"] == "text")
        out[text] = r.body
    return out


# --------------------------------------------------------------------------------------------------
# what is sent


def test_request_format_images_and_order(server, make_backend):
    b = make_backend(server, max_image_side=64, jpeg_quality=80, temperature=0.0, top_p=0.9, seed=7)
    rgba = Image.new("RGBA", (50, 200), (0, 128, 0, 128))
    convs = [
        [Message.system("You describe frames."), Message.user(_image(200, 100), "Describe", " this.")],
        [Message.user("first ", _image(40, 30), " middle ", rgba, " last")],
        [Message.user("plain text"), Message.assistant("ok"), Message.user("follow-up")],
    ]
    out = b.generate(convs)
    assert out == ["reply to: Describe this.", "reply to: first  middle  last", "reply to: follow-up"]
    assert server.request_count == 3
    for r in server.requests:
        assert r.path == "/v1/chat/completions"
        assert r.body["model"] == "test-vlm"
        assert r.body["max_tokens"] == 256
        assert r.body["temperature"] == 0.0 and r.body["top_p"] == 0.9 and r.body["seed"] == 7
    bodies = _bodies_by_text(server)

    m = bodies["Describe this."]["messages"]
    assert m[0] == {"role": "system", "content": "You describe frames."}
    parts = m[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text", "text"]
    assert [p.get("text") for p in parts[1:]] == ["Describe", " this."]
    img = _decode_data_url(parts[0]["image_url"]["url"])
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 32)

    parts = bodies["first  middle  last"]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    small = _decode_data_url(parts[1]["image_url"]["url"])
    assert small.size == (40, 30)  # smaller than max_image_side: untouched
    flat = _decode_data_url(parts[3]["image_url"]["url"])
    assert flat.size == (16, 64) and flat.mode == "RGB"

    m = bodies["follow-up"]["messages"]
    assert m == [
        {"role": "user", "content": "plain text"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "follow-up"},
    ]


def test_outputs_keep_input_order_and_max_tokens_override(server, make_backend):
    server.delay_s = 0.01
    b = make_backend(server, max_in_flight=4, seed=None)
    convs = [[Message.user(f"prompt {i}")] for i in range(12)]
    out = b.generate(convs, max_new_tokens=17)
    assert out == [f"reply to: prompt {i}" for i in range(12)]
    assert all(r.body["max_tokens"] == 17 for r in server.requests)
    assert all("seed" not in r.body for r in server.requests)
    assert b.generate([]) == []


def test_api_key_header_and_no_secret_in_records(server, make_backend, monkeypatch):
    b = make_backend(server)
    b.generate([[Message.user("no key")]])
    assert "authorization" not in server.requests[-1].headers  # local servers need none

    monkeypatch.setenv(KEY_ENV, SECRET)
    b.generate([[Message.user("with key")]])
    assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"

    d = b.describe()
    assert d["backend"] == "openai" and d["model"] == "test-vlm" and d["base_url"] == server.base_url
    assert d["server_model"] == "test-vlm" and d["system_fingerprint"] == "fp_test"
    assert SECRET not in repr(d) and KEY_ENV not in repr(d)

    server.fail_next(1, status=401, text="invalid key")
    with pytest.raises(BackendError) as ei:
        b.generate([[Message.user("x")]])
    assert SECRET not in str(ei.value) and "401" in str(ei.value)


def test_credentials_in_base_url_are_not_echoed(server, make_backend):
    port = server.base_url.split(":")[2].split("/")[0]
    cfg = OpenAIBackendConfig(model="m", base_url=f"http://user:hunter2@127.0.0.1:{port}/v1", max_retries=0)
    b = build_backend(cfg)
    try:
        server.fail_next(1, status=400)
        with pytest.raises(BackendError) as ei:
            b.generate([[Message.user("x")]])
        assert "hunter2" not in str(ei.value) and "hunter2" not in repr(b.describe())
    finally:
        b.close()


# --------------------------------------------------------------------------------------------------
# retries


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_errors_are_retried(server, make_backend, status):
    b = make_backend(server, max_retries=3)
    server.fail_next(2, status=status, retry_after="0")
    assert b.generate([[Message.user("hello")]]) == ["reply to: hello"]
    assert server.request_count == 3


def test_retry_after_is_honoured_and_capped(server, make_backend):
    b = make_backend(server, max_retries=2, backoff_base_s=0.0, backoff_max_s=0.3)
    server.fail_next(1, status=429, retry_after="0.2")
    t0 = time.monotonic()
    assert b.generate([[Message.user("a")]]) == ["reply to: a"]
    assert time.monotonic() - t0 >= 0.2

    server.fail_next(1, status=503, retry_after="3600")  # capped at backoff_max_s
    t0 = time.monotonic()
    assert b.generate([[Message.user("b")]]) == ["reply to: b"]
    assert time.monotonic() - t0 < 3.0


def test_exhausted_retries_raise_clear_error(server, make_backend):
    b = make_backend(server, max_retries=2)
    server.fail_next(10, status=503, text="model is overloaded " + "x" * 2000)
    with pytest.raises(BackendError) as ei:
        b.generate([[Message.user("hello")]])
    msg = str(ei.value)
    assert server.request_count == 3
    assert server.base_url + "/chat/completions" in msg
    assert "3 attempt" in msg and "HTTP 503" in msg and "model is overloaded" in msg
    assert len(msg) < 800  # the server's text is truncated


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_not_retried(server, make_backend, status):
    b = make_backend(server, max_retries=5)
    server.fail_next(1, status=status, text="bad request: unknown field frobnicate")
    with pytest.raises(BackendError, match=rf"HTTP {status}.*not retried.*frobnicate"):
        b.generate([[Message.user("hello")]])
    assert server.request_count == 1


def test_timeouts_are_retried(server, make_backend):
    b = make_backend(server, timeout_s=0.3, max_retries=2)
    server.hang_next(1, 3.0)
    t0 = time.monotonic()
    assert b.generate([[Message.user("slow")]]) == ["reply to: slow"]
    assert server.request_count == 2
    assert time.monotonic() - t0 < 2.5

    server.hang_next(3, 3.0)
    with pytest.raises(BackendError, match=r"3 attempt.*timed out"):
        b.generate([[Message.user("always slow")]])


def test_connection_errors_are_retried_then_fail():
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = OpenAIBackendConfig(
        model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_base_s=0.001, backoff_max_s=0.01
    )
    with build_backend(cfg) as b:
        with pytest.raises(BackendError, match=r"3 attempt.*connection error"):
            b.generate([[Message.user("x")]])


@pytest.mark.parametrize(
    "body",
    [{"object": "chat.completion"}, {"choices": []}, {"choices": [{"message": {"role": "assistant"}}]}, "not json"],
)
def test_malformed_responses(server, make_backend, body):

    b = make_backend(server, max_retries=3)
    server.push(Action(status=200, body=body))
    with pytest.raises(BackendError, match="malformed|not JSON"):
        b.generate([[Message.user("x")]])
    assert server.request_count == 1


def test_one_failure_fails_the_call_and_stops_the_rest(server, make_backend):
    server.delay_s = 0.05
    b = make_backend(server, max_in_flight=2, max_retries=0)
    server.fail_next(1, status=400, text="first one is bad")
    with pytest.raises(BackendError, match="first one is bad"):
        b.generate([[Message.user(f"p{i}")] for i in range(20)])
    assert server.request_count < 20  # the queued ones were cancelled
    assert server.in_flight == 0
    # the backend is still usable
    assert b.generate([[Message.user("again")]]) == ["reply to: again"]


# --------------------------------------------------------------------------------------------------
# bounded in time, memory and trust


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_a_slow_drip_reply_is_cut_at_the_deadline(server, make_backend, drip_headers):
    """A server sending a byte every 50 ms never trips a per-read timeout; the deadline of each attempt
    (timeout_s, for connect + send + the whole reply) cuts it, and the whole call stays within
    worst_case_s."""
    b = make_backend(server, timeout_s=0.5, max_retries=1)
    for _ in range(2):
        server.push(Action(drip_s=0.05, drip_headers=drip_headers))  # ~300 bytes: 15 s at this pace
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"2 attempt.*timed out: no complete reply within timeout_s=0.5s"):
        b.generate([[Message.user("slow")]])
    elapsed = time.monotonic() - t0
    assert server.request_count == 2
    assert b.cfg.worst_case_s == pytest.approx(2 * 0.5 + 1 * 0.01)
    assert elapsed < b.cfg.worst_case_s + 1.0, elapsed
    # a reply that drips in within the deadline is fine, and the backend is still usable
    server.push(Action(drip_s=0.001))
    assert b.generate([[Message.user("fast enough")]]) == ["reply to: fast enough"]


def test_worst_case_is_documented_and_bounded():
    cfg = OpenAIBackendConfig(model="m", timeout_s=5, max_retries=2, backoff_max_s=3)
    assert cfg.worst_case_s == 3 * 5 + 2 * 3
    assert "worst_case_s" in OpenAIBackendConfig.model_fields["timeout_s"].description
    for bad in ({"max_retries": 1000}, {"timeout_s": 1e9}, {"backoff_max_s": 1e9}, {"max_reply_bytes": 10}):
        with pytest.raises(ConfigError):
            build_backend({"type": "openai", "model": "m", **bad})


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "streamed"])
def test_a_reply_larger_than_the_limit_is_refused_without_reading_it(make_backend, content_length):
    huge = "x" * (8 * 1024 * 1024)
    with ChatServer(responder=lambda body: huge) as server:
        b = make_backend(server, max_retries=3)
        server.push(Action(content_length=content_length))
        limit = 64 * 64 + 64 * 1024
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=rf"larger than {limit} bytes for max_new_tokens=64.*not retried"):
            b.generate([[Message.user("x")]], max_new_tokens=64)
        assert server.request_count == 1 and time.monotonic() - t0 < 5
        # max_reply_bytes sets the limit
        b2 = make_backend(server, max_reply_bytes=4096)
        with pytest.raises(BackendError, match="larger than 4096 bytes"):
            b2.generate([[Message.user("x")]])


def test_an_answer_longer_than_max_tokens_is_cut(make_backend):
    with ChatServer(responder=lambda body: "word " * 400) as server:  # 2000 characters, whatever max_tokens says
        b = make_backend(server)
        (out,) = b.generate([[Message.user("x")]], max_new_tokens=16)
        assert out == ("word " * 400)[: 16 * 16].strip()


def test_the_api_key_never_reaches_an_error_or_a_log_line(server, make_backend, monkeypatch, caplog):
    """A server (or proxy) that echoes the request's headers into its error text: the key is redacted
    from the error message and from the retry warnings."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    b = make_backend(server, max_retries=2)
    server.fail_next(3, status=503, text="upstream down", echo_headers=True)
    with caplog.at_level("WARNING", logger="captioner.backends.openai"):
        with pytest.raises(BackendError) as ei:
            b.generate([[Message.user("x")]])
    msg = str(ei.value)
    assert "HTTP 503" in msg and "upstream down" in msg and "[redacted]" in msg
    assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"  # it was sent...
    assert SECRET not in msg and SECRET not in caplog.text and "[redacted]" in caplog.text  # ...and never shown
    server.fail_next(1, status=400, text="bad field", echo_headers=True)
    with pytest.raises(BackendError) as ei:
        b.generate([[Message.user("x")]])
    assert "HTTP 400" in str(ei.value) and SECRET not in str(ei.value)
    # a proxy that echoes the key into an answer
    server.responder = lambda body: f"caption; debug: key={SECRET}"
    assert SECRET not in b.generate([[Message.user("x")]])[0]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_raise_auth_error_at_once(server, make_backend, monkeypatch, status):
    monkeypatch.setenv(KEY_ENV, SECRET)
    b = make_backend(server, max_retries=5)
    server.fail_next(1, status=status, text="invalid api key", echo_headers=True)
    with pytest.raises(AuthError) as ei:
        b.generate([[Message.user("x")]])
    msg = str(ei.value)
    assert server.request_count == 1
    assert server.base_url + "/chat/completions" in msg and f"HTTP {status}" in msg and KEY_ENV in msg
    assert SECRET not in msg and "invalid api key" in msg


def test_redact():
    key = "sk-live-abcdef123456"
    text = (f'{{"authorization": "Bearer {key}"}} Authorization: Basic dXNlcjpwYXNz x-api-key={key}; '
            f"token Bearer abc.def-ghi then {key} alone")
    out = redact(text, [key, None, ""])
    assert key not in out and "dXNlcjpwYXNz" not in out and "abc.def-ghi" not in out
    assert out.count("[redacted]") == 5 and out.endswith("then [redacted] alone")
    assert redact("HTTP 401: no key given") == "HTTP 401: no key given"


# --------------------------------------------------------------------------------------------------
# concurrency


def test_in_flight_bound(server, make_backend):
    server.delay_s = 0.15
    b = make_backend(server, max_in_flight=3)
    out = b.generate([[Message.user(f"p{i}")] for i in range(10)])
    assert out == [f"reply to: p{i}" for i in range(10)]
    assert 1 < server.max_concurrency <= 3


def test_in_flight_bound_across_threads(server, make_backend):
    import threading

    server.delay_s = 0.1
    b = make_backend(server, max_in_flight=2)
    results = {}

    def run(k):
        results[k] = b.generate([[Message.user(f"t{k}-{i}")] for i in range(3)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert all(results[k] == [f"reply to: t{k}-{i}" for i in range(3)] for k in range(3))
    assert server.max_concurrency <= 2


# --------------------------------------------------------------------------------------------------
# config


def test_config_from_dict_and_validation(server):
    b = build_backend({"type": "openai", "model": "m", "base_url": server.base_url})
    try:
        assert b.name == "openai" and b.supports_images
    finally:
        b.close()
    with pytest.raises(ConfigError):
        build_backend({"type": "openai", "model": "m", "api_key": "sk-should-not-be-here"})
    with pytest.raises(ConfigError):
        build_backend({"type": "openai", "model": "m", "max_in_flight": 0})


def test_closed_backend_refuses(server, make_backend):
    b = make_backend(server)
    b.close()
    b.close()
    with pytest.raises(BackendError, match="close"):
        b.generate([[Message.user("x")]])



def test_a_served_model_named_by_a_path_is_not_looked_for_on_disk(server, monkeypatch):
    """vLLM serves a local model under its path: for the openai backend that name is the server's, not a
    file here, so building a captioner with it must not look for it on disk."""
    from captioner.caption import CaptionConfig, VideoCaptioner

    monkeypatch.delenv(KEY_ENV, raising=False)
    name = "/models/Qwen2.5-VL-7B-Instruct"
    cfg = CaptionConfig.model_validate({"captioner": {"type": "openai", "model": name, "base_url": server.base_url,
                                                      "api_key_env": KEY_ENV}})
    captioner = VideoCaptioner(cfg, prepare=False)
    try:
        assert captioner.captioner.generate([[Message.user("hi")]]) == ["reply to: hi"]
    finally:
        captioner.captioner.close()
    assert server.requests[0].body["model"] == name


def test_images_to_a_text_only_model_are_one_clear_error(make_backend):
    """A server that drops image parts for a text-only model (transformers serve does) would answer
    every captioning request blind: the first request with images finds out (the same 1-token request
    with and without an image count the same prompt tokens) and fails naming the model and server."""
    from captioner.errors import FatalBackendError, UnsupportedInputError

    with ChatServer(text_only=True, model_name="smol-text") as srv:
        backend = make_backend(srv, model="smol-text")
        assert backend.generate([[Message.user("Say hello.")]]) == ["reply to: Say hello."]  # text is fine
        for _ in range(2):  # checked once; the verdict is kept
            with pytest.raises(UnsupportedInputError) as exc:
                backend.generate([[Message.user(_image(64, 64), "Describe the image.")]])
            assert isinstance(exc.value, FatalBackendError)
            assert "'smol-text'" in str(exc.value) and srv.base_url in str(exc.value) and "ignores images" in str(exc.value)
        assert len(srv.probes) == 2 and len(srv.requests) == 1  # no captioning request went out blind
    with ChatServer() as srv:  # a vision model's server: the check passes once, then requests flow
        backend = make_backend(srv)
        for _ in range(2):
            assert backend.generate([[Message.user(_image(64, 64), "Describe it.")]]) == ["reply to: Describe it."]
        assert len(srv.probes) == 2 and len(srv.requests) == 2
        assert "image_url" in str(srv.probes[0].body) and "image_url" not in str(srv.probes[1].body)


def test_a_server_that_refuses_images_is_one_clear_error(make_backend):
    from captioner.errors import UnsupportedInputError

    with ChatServer() as srv:
        srv.responder = None
        backend = make_backend(srv, model="text-llm", max_retries=0)
        original = srv._reply

        def refuse(body):
            if "image_url" in str(body):
                raise ValueError
            return original(body)

        srv._reply = refuse  # an image request breaks the handler: the server answers 500
        with pytest.raises(UnsupportedInputError, match="'text-llm' at .* does not take images"):
            backend.generate([[Message.user(_image(64, 64), "Describe it.")]])
