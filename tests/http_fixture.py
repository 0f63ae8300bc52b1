"""A small threaded HTTP file server on 127.0.0.1 for offline download tests.

It serves the files of one folder, honours ``Range: bytes=START-[END]`` requests (206 with
``Content-Range``, 416 when START lies past the end) and has switches that imitate what real
servers do to a download:

- ``cut_after_bytes = K``: the next request gets full headers but only K bytes of body, then the
  connection is closed (one shot; the switch resets itself);
- ``error_status = 500``: every request is answered with that status until the switch is cleared;
- ``ignore_range = True``: Range headers are ignored and the whole file is sent with 200.

Every request is recorded in ``requests`` so tests can count network access.

Usage::

    with LocalHTTPServer(folder) as server:
        download_file(server.url("a.zip"), dest)
        assert len(server.requests) == 1
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE_PATTERN = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class ServedRequest:
    """One request the server answered: the URL path, its Range header (or None), the status."""

    path: str
    range_header: str | None
    status: int


class LocalHTTPServer:
    """Serve the files under ``folder`` at ``http://127.0.0.1:<free port>/<relative path>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.cut_after_bytes: int | None = None
        self.error_status: int | None = None
        self.ignore_range = False
        self.requests: list[ServedRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # A short poll interval makes stop() (and so each test's teardown) take ~50 ms, not 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:43123``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, relative_path: str) -> str:
        """Full URL of a file under the served folder."""
        return f"{self.base_url}/{relative_path}"

    def start(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, path: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(ServedRequest(path, range_header, status))

    def _take_cut(self) -> int | None:
        """Return the pending cut length and clear it, so only the next request is cut."""
        with self._lock:
            cut, self.cut_after_bytes = self.cut_after_bytes, None
        return cut

    def _resolve(self, url_path: str) -> Path | None:
        """Map a URL path to a file inside the folder; None when missing or outside it."""
        candidate = (self.folder / url_path.split("?", 1)[0].lstrip("/")).resolve()
        inside = candidate == self.folder or self.folder in candidate.parents
        return candidate if inside and candidate.is_file() else None

    def handle_get(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one GET request according to the current switches."""
        range_header = handler.headers.get("Range")
        if self.error_status is not None:
            self._send_status(handler, self.error_status, range_header)
            return
        path = self._resolve(handler.path)
        if path is None:
            self._send_status(handler, 404, range_header)
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        match = _RANGE_PATTERN.match(range_header or "")
        use_range = match is not None and not self.ignore_range
        if use_range:
            start = int(match.group(1))
            end = min(int(match.group(2)), end) if match.group(2) else end
            if start >= len(data):
                self._send_status(handler, 416, range_header, f"bytes */{len(data)}")
                return
        status = 206 if use_range else 200
        self._record(handler.path, range_header, status)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(end - start + 1))
        handler.send_header("Accept-Ranges", "bytes")
        if use_range:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        handler.end_headers()
        body = data[start : end + 1]
        cut = self._take_cut()
        # A cut sends the promised Content-Length but fewer bytes, then the connection closes
        # (HTTP/1.0 handlers close after each response): exactly what a dropped Wi-Fi looks like.
        handler.wfile.write(body if cut is None else body[:cut])

    def _send_status(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        range_header: str | None,
        content_range: str | None = None,
    ) -> None:
        self._record(handler.path, range_header, status)
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        if content_range is not None:
            handler.send_header("Content-Range", content_range)
        handler.end_headers()


def _make_handler(owner: LocalHTTPServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``owner`` (http.server instantiates it per request)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name is fixed by http.server
            owner.handle_get(self)

        def log_message(self, format: str, *args: object) -> None:
            """Keep pytest output quiet; requests are recorded in ``owner.requests``."""

    return Handler
