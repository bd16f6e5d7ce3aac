"""A static HTTP server on 127.0.0.1 that behaves like the sites `dist-s2s download` reads archives from.

It serves a directory laid out as `<host>/<path>` (what `--archive-mirror` expects), streams files in
1 MiB blocks, answers range requests (`Range: bytes=N-`, 206 with Content-Range) as statmt.org's and
LIUM's Apache servers do, and can cut a transfer off: `cut_after={"<path>": bytes}` sends the full
Content-Length but closes the connection after that many bytes of the path's first response, as a
dropped connection would. Every request is recorded (`requests`: path and Range header).

Used by `benchmarks/download_scale.py` (multi-GB) and `tests/test_download.py` (small).
"""

from __future__ import annotations

import re
import shutil
import threading
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BLOCK = 1 << 20


class _Handler(SimpleHTTPRequestHandler):
    mirror: ArchiveMirror

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        path = (self.mirror.directory / relative).resolve()
        if self.mirror.directory not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        wanted = self.headers.get("Range")
        self.mirror.requests.append((relative, wanted))
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        start = int(match[1]) if match else 0
        if start >= size and size:
            self.send_error(416)
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        limit = self.mirror.cut_after.pop(relative, None)
        with open(path, "rb") as source:
            source.seek(start)
            if limit is None:
                shutil.copyfileobj(source, self.wfile, BLOCK)
                return
            sent = 0
            while sent < limit and (block := source.read(min(BLOCK, limit - sent))):
                self.wfile.write(block)
                sent += len(block)
        self.wfile.flush()
        self.close_connection = True  # the rest never comes: the client sees the connection close early


class ArchiveMirror:
    """`with ArchiveMirror(directory, cut_after={...}) as mirror: mirror.url`."""

    def __init__(self, directory: Path, cut_after: dict[str, int] | None = None):
        self.directory = Path(directory).resolve()
        self.cut_after = dict(cut_after or {})
        self.requests: list[tuple[str, str | None]] = []
        handler = type("Handler", (_Handler,), {"mirror": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(self.directory)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ArchiveMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
