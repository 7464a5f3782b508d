"""A scriptable OpenAI-style chat-completions server on 127.0.0.1, for tests.

It answers ``POST .../chat/completions`` with ``"reply to: <last user text>"``, records every request
(path, headers, JSON body), can be told to fail the next N requests (any status, optional
``Retry-After``, optionally echoing the request's headers -- the API key -- into the error body, as
careless proxies do), to hang on a request (for client timeouts), to send an answer slowly (a byte
every ``drip_s``, from the status line or from the body on), to answer a fixed body (with or without
a Content-Length), or to delay every answer; it tracks the largest number of requests it was handling
at once and how many bytes of each answer it got out.

    with ChatServer() as server:
        server.fail_next(2, status=429, retry_after="0")
        ... OpenAIBackendConfig(model="m", base_url=server.base_url) ...
        assert server.max_concurrency <= 3

It only ever listens on 127.0.0.1 (port chosen by the OS), and every wait is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 64 * 1024 * 1024
MAX_WAIT_S = 30.0  # no handler ever waits longer than this


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or the raw text when it is not JSON


@dataclass
class Action:
    """What to do with one request instead of the normal reply."""

    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> raw text; None -> normal reply
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0  # wait this long before answering (client timeouts)
    drip_s: float = 0.0  # send the answer one byte every drip_s seconds (all of it within MAX_WAIT_S)
    drip_headers: bool = False  # drip from the status line on (else: headers at once, then the body)
    content_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    echo_headers: bool = False  # put the request's headers (Authorization included) in the error message


def _last_user_text(body: Any) -> str:
    try:
        messages = body["messages"]
    except (TypeError, KeyError):
        return ""
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class ChatServer:
    def __init__(self, *, delay_s: float = 0.0, model_name: str | None = None, responder=None, text_only: bool = False):
        """``responder(body) -> str | None``: the reply text for a request body (None: the default
        reply), so that answers can depend on the request regardless of the order requests arrive in.

        Token usage is counted like a server would: words of the messages, plus 256 per image unless
        ``text_only`` (a text-only model whose server drops image parts). The backend's image check
        (two ``max_tokens: 1`` requests before the first request with images) is answered at once and
        recorded in ``probes``, not in ``requests``, and takes none of the scripted actions."""
        self.text_only = text_only
        self.probes: list[RecordedRequest] = []
        self.responder = responder
        self.delay_s = delay_s
        self.model_name = model_name
        self.requests: list[RecordedRequest] = []
        self.bytes_sent: list[int] = []  # per answer, bytes written before it ended or the client left
        self.in_flight = 0
        self.max_concurrency = 0
        self._actions: deque[Action] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- scripting

    def fail_next(
        self, n: int, status: int = 500, *, retry_after: str | None = None, text: str = "server error",
        echo_headers: bool = False,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and ``{"error": {"message": text}}`` (with
        ``echo_headers``, the message goes on with the request's headers, Authorization included)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        for _ in range(n):
            self.push(Action(status=status, body={"error": {"message": text, "code": status}}, headers=headers,
                             echo_headers=echo_headers))

    def hang_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` requests for ``seconds`` before answering normally."""
        for _ in range(n):
            self.push(Action(hang_s=seconds))

    def push(self, action: Action) -> None:
        with self._lock:
            self._actions.append(action)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY the body waits ~40 ms for
            # the client's delayed ACK on every request
            disable_nagle_algorithm = True

            def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
                pass

            def do_POST(self):  # noqa: N802
                server._handle(self)

            def do_GET(self):  # noqa: N802
                self._send(404, {"error": {"message": "not found"}}, {})

            def _send(self, status: int, body: Any, headers: dict[str, str], action: Action | None = None) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                length = action is None or action.content_length
                drip = action.drip_s if action is not None else 0.0
                sent = 0
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                    if length:
                        self.send_header("Content-Length", str(len(data)))
                    else:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if drip > 0:
                        head = b"".join(self._headers_buffer) + b"\r\n"
                        self._headers_buffer = []
                        if not action.drip_headers:
                            self.wfile.write(head)
                            sent, head = len(head), b""
                        raw, stop_at = head + data, time.monotonic() + MAX_WAIT_S
                        for i in range(len(raw)):
                            if server._stop.wait(drip) or time.monotonic() > stop_at:
                                break
                            self.wfile.write(raw[i : i + 1])
                            self.wfile.flush()
                            sent += 1
                        return
                    self.end_headers()
                    view = memoryview(data)
                    for i in range(0, len(data), 1 << 16):
                        self.wfile.write(view[i : i + (1 << 16)])
                        sent += len(view[i : i + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test, a reply too large)
                finally:
                    with server._lock:
                        server.bytes_sent.append(sent)

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog of 5 drops the SYNs of a burst of new connections (more
            # requests in flight than that), and the client's retransmission waits a whole second
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------- handling

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(min(length, MAX_BODY)) if length else b""
        try:
            body: Any = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = raw.decode("utf-8", "replace")
        if isinstance(body, dict) and body.get("max_tokens") == 1:  # the backend's image check
            with self._lock:
                self.probes.append(RecordedRequest(h.path, {k.lower(): v for k, v in h.headers.items()}, body))
            h._send(200, self._reply(body), {})
            return
        with self._lock:
            self.requests.append(RecordedRequest(h.path, {k.lower(): v for k, v in h.headers.items()}, body))
            action = self._actions.popleft() if self._actions else None
            self.in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self.in_flight)
        try:
            wait = self.delay_s + (action.hang_s if action else 0.0)
            if wait > 0:
                self._stop.wait(min(wait, MAX_WAIT_S))
            if not h.path.rstrip("/").endswith("/chat/completions"):
                h._send(404, {"error": {"message": f"no route {h.path}"}}, {})
                return
            if action is not None and action.body is not None:
                answer = action.body
                if action.echo_headers and isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                    seen = {k: v for k, v in h.headers.items()}
                    answer = {"error": {**answer["error"], "message": f"{answer['error'].get('message')}; you sent "
                                        f"Authorization: {seen.get('Authorization')}; request headers: {seen}",
                                        "request_headers": seen}}
                h._send(action.status, answer, action.headers, action)
                return
            h._send(action.status if action else 200, self._reply(body), action.headers if action else {}, action)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, body: Any) -> dict:
        model = self.model_name or (body.get("model") if isinstance(body, dict) else None) or "test-model"
        text = self.responder(body) if self.responder is not None else None
        if text is None:
            text = f"reply to: {_last_user_text(body)}"
        return {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": (n := self._prompt_tokens(body)), "completion_tokens": 1, "total_tokens": n + 1},
        }

    def _prompt_tokens(self, body: Any) -> int:
        words = images = 0
        for msg in body.get("messages", []) if isinstance(body, dict) else []:
            content = msg.get("content") if isinstance(msg, dict) else None
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            for p in parts:
                if isinstance(p, dict) and p.get("type") == "text":
                    words += len(str(p.get("text", "")).split())
                elif isinstance(p, dict) and p.get("type") == "image_url":
                    images += 1
        return words + 4 + (0 if self.text_only else 256 * images)
