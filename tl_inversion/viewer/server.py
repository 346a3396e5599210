"""The live preimage viewer: a local HTTP server over a static page (issue 15).

Standard library only (:class:`http.server.ThreadingHTTPServer` and JSON endpoints), no web
framework: nothing to install, one process, and the probed model and its decoders stay in
memory between requests (loading them is the slow part). The page (``static/index.html``,
``app.js``, ``app.css``: plain JavaScript, no build step, nothing from a CDN) calls:

=========================  ====================================================
``GET /``                  the page (``/app.js``, ``/app.css`` its files)
``GET /api/info``          sites, positions, defaults and caps (:meth:`ViewerSession.info`)
``POST /api/sample``       sample + verify a preimage (:meth:`ViewerSession.sample`)
``POST /api/attention``    every head's attention pattern for an input
=========================  ====================================================

Heavy work (sampling, forwards) runs one request at a time behind a lock; other requests
wait. A bad request (a :class:`~tl_inversion.errors.TLInversionError`) answers 400 with
``{"error": message, "kind": class name}``; an unexpected failure answers 500 with its
message and is logged; the server keeps serving either way. It binds ``127.0.0.1`` unless
told otherwise: it runs arbitrary sampling on request and has no authentication.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable

from tl_inversion.errors import InputTypeError, InputValueError, TLInversionError
from tl_inversion.viewer.api import ViewerSession

__all__ = ["ViewerHandle", "make_server", "serve", "serve_demo"]

MAX_BODY = 64 * 1024
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/index.html": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/app.css": ("app.css", "text/css; charset=utf-8")}


def _static(name: str) -> bytes:
    return (resources.files("tl_inversion.viewer") / "static" / name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "_ViewerServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless asked
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path in _STATIC:
            name, ctype = _STATIC[path]
            self._send(200, _static(name), ctype)
        elif path == "/api/info":
            self._json(200, self.server.session.info())
        else:
            self._json(404, {"error": f"no such page: {path}", "kind": "NotFound"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        endpoints: dict[str, Callable[[Any], Any]] = {
            "/api/sample": self.server.session.sample,
            "/api/attention": self.server.session.attention,
        }
        if path not in endpoints:
            self._json(404, {"error": f"no such endpoint: {path}", "kind": "NotFound"})
            return
        try:
            payload = self._read_json()
            with self.server.lock:
                out = endpoints[path](payload)
            self._json(200, out)
        except TLInversionError as exc:
            self._json(400, {"error": str(exc), "kind": type(exc).__name__})
        except Exception as exc:  # a bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error ({type(exc).__name__}): {exc}", "kind": "InternalError"})

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise InputValueError("bad Content-Length header") from None
        if length > MAX_BODY:
            raise InputValueError(f"request body of {length} bytes is larger than the {MAX_BODY}-byte limit")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            payload = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputValueError(f"the request body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise InputTypeError(f"the request body must be a JSON object, got {type(payload).__name__}")
        return payload


class _ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], session: ViewerSession, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.session = session
        self.lock = threading.Lock()
        self.verbose = verbose


@dataclass
class ViewerHandle:
    """A viewer running in a background thread (what ``serve(..., block=False)`` returns).

    Attributes:
        url: the page's address, e.g. ``http://127.0.0.1:8765/``.
        server: the underlying :class:`~http.server.ThreadingHTTPServer`.
        thread: the thread serving it.
    """

    url: str
    server: ThreadingHTTPServer
    thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port (waits for the serving thread)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> "ViewerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_server(model: Any, bank: Any, task: Any, *, host: str = "127.0.0.1", port: int = 8765,
                default_query: str = "", verbose: bool = False) -> ThreadingHTTPServer:
    """A viewer server bound to ``(host, port)``, not yet serving.

    Args:
        model: the probed model.
        bank: its decoder bank.
        task: the task object or its registered name.
        host: address to bind.
        port: TCP port (0: any free one).
        default_query: the input the page starts with.
        verbose: log every request to stderr.

    Returns:
        The server (``server.server_address`` holds the bound port).

    Raises:
        InputValueError: a port outside 0..65535, or a task other than the bank's.
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    from tl_inversion.tasks import as_task

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
    task = as_task(task)
    bank.check_task(task)
    session = ViewerSession(model, bank, task, default_query=default_query)
    return _ViewerServer((host, port), session, verbose)


def serve(model: Any, bank: Any, task: Any, *, host: str = "127.0.0.1", port: int = 8765, block: bool = True,
          default_query: str = "", verbose: bool = False) -> ViewerHandle | None:
    """Serve the live preimage viewer for a probed model and its decoder bank.

    Args:
        model: the probed model (HookedTransformer or TransformerBridge).
        bank: a :class:`~tl_inversion.decoding.bank.DecoderBank` trained on ``model``.
        task: the task object or its registered name (e.g. ``"counting"``).
        host: address to bind; the default ``127.0.0.1`` keeps the viewer local.
        port: TCP port; 0 picks a free one (read it from the handle's ``url``).
        block: serve in this thread until interrupted (Ctrl-C); ``False`` serves in a
            background thread and returns a handle.
        default_query: the input the page starts with.
        verbose: log every request to stderr.

    Returns:
        With ``block=False``, a :class:`ViewerHandle` (``.url``, ``.close()``); else ``None``
        once serving stops.

    Raises:
        InputValueError: a bad port; the task is not the one the bank was trained on.
        OSError: the address cannot be bound.
    """
    server = make_server(model, bank, task, host=host, port=port, default_query=default_query, verbose=verbose)
    host_shown, port_bound = server.server_address[:2]
    url = f"http://{'[' + host_shown + ']' if ':' in str(host_shown) else host_shown}:{port_bound}/"
    if not block:
        thread = threading.Thread(target=server.serve_forever, name="tl-inversion-viewer", daemon=True)
        thread.start()
        return ViewerHandle(url, server, thread)
    print(f"tl-inversion viewer at {url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return None


def serve_demo(*, host: str = "127.0.0.1", port: int = 8765, block: bool = True, default_query: str = "",
               verbose: bool = False) -> ViewerHandle | None:
    """Serve the viewer over the embedded counting demo (:func:`tl_inversion.demo.load_demo`).

    Args:
        host: address to bind (default: local only).
        port: TCP port (0: any free one).
        block: serve until Ctrl-C; ``False`` serves in a background thread.
        default_query: the input the page starts with (default: the demo's first query).
        verbose: log every request to stderr.

    Returns:
        As :func:`serve`.
    """
    from tl_inversion.demo import DEMO_QUERIES, load_demo
    from tl_inversion.tasks import counting

    model, bank = load_demo()
    return serve(model, bank, counting.make_task(), host=host, port=port, block=block,
                 default_query=default_query or DEMO_QUERIES[0][0], verbose=verbose)
