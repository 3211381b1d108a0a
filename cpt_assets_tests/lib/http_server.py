"""A real HTTP file server for download tests: range requests, one-off truncated responses, 404s.

The fetch stage talks to publishers' web servers; testing it against a real socket (not a mocked `requests`) is
what proves resume, skip-what-exists and error reporting work. `http.server` has no Range support, so the handler
below implements the few lines of RFC 9110 that downloads need: `Range: bytes=N-` answered with 206 and
`Content-Range`, 416 past the end, and a switch that makes the server ignore Range (answer 200), as some do.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    """One request the server answered."""

    path: str
    range: str | None  # the Range header the client sent
    status: int
    body_bytes: int  # bytes of body the server sent (logged before the headers go out)


@dataclass
class FolderServer:
    """Handle on a running server: URLs, the request log, and knobs that shape the next responses."""

    root: Path
    base_url: str
    requests: list[Served] = field(default_factory=list)
    ignore_range: bool = False  # answer every GET with 200 and the whole file, as servers without Range do
    _cuts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{quote(name)}"

    def cut_once(self, name: str, after_bytes: int) -> None:
        """Make the next GET of `name` send full headers but close the connection after `after_bytes` of body."""
        with self._lock:
            self._cuts[name] = after_bytes

    def take_cut(self, name: str) -> int | None:
        with self._lock:
            return self._cuts.pop(name, None)

    def log(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)

    def body_bytes(self, name: str | None = None) -> int:
        """Bytes of body served so far (for one file name, or all)."""
        with self._lock:
            return sum(r.body_bytes for r in self.requests if name is None or r.path == name)


def _handler_for(state: FolderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            return

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _serve(self, send_body: bool) -> None:
            name = unquote(urlsplit(self.path).path).lstrip("/")
            range_header = self.headers.get("Range")
            file = (state.root / name).resolve()
            if not name or state.root.resolve() not in file.parents or not file.is_file():
                self._reply_empty(404, name, range_header)
                return
            data = file.read_bytes()
            total = len(data)
            start, status = 0, 200
            match = _RANGE.match(range_header or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= total:
                    self._reply_empty(416, name, range_header, {"Content-Range": f"bytes */{total}"})
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            cut = state.take_cut(name) if send_body else None
            if cut is not None:
                self.send_header("Connection", "close")
            payload = (body if cut is None else body[:cut]) if send_body else b""
            # Logged before the headers leave: a client that has its answer may look at the log at once.
            state.log(Served(name, range_header, status, len(payload)))
            self.end_headers()
            if send_body:
                self.wfile.write(payload)
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        def _reply_empty(self, status: int, name: str, range_header: str | None, headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            state.log(Served(name, range_header, status, 0))
            self.end_headers()

    return Handler


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[FolderServer]:
    """Serve `root` over HTTP on 127.0.0.1 (a free port) in a background thread for the block's duration."""
    state = FolderServer(root=Path(root), base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    state.base_url = f"http://{host}:{port}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http-server", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
