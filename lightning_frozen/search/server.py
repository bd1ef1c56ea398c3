"""`lightning-frozen serve`: a search page and a JSON API over an index (FastAPI + uvicorn).

    lightning-frozen serve my_index [--host 127.0.0.1] [--port 8000]

``GET /api/search?q=...&k=...`` returns what ``search --json`` prints, each result with
its thumbnail and media URLs added; ``GET /`` is a page of result cards that play each
window from its start (HTTP range requests, ``#t=start,end``). Only files the index holds,
inside the indexed folder, are served: anything else (``..``, absolute or encoded paths,
links that leave the folder) is a 404. Formats a browser cannot play (AVI, most MKV, HEVC)
get the thumbnail and a download link. Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Literal, Optional, Sequence
from urllib.parse import quote

from .arguments import Parser, port
from .query import Index, open_index, read_bank

MAX_QUERY_CHARS = 300
MAX_K = 100
DEFAULT_K = 12
MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer: a larger number in a URL is refused, not passed on
# Browsers play these codecs in MP4/WebM containers; anything else gets a transcode or a download link.
PLAYABLE_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})
PLAYABLE_CONTAINERS = frozenset({".mp4", ".m4v", ".webm", ".mov"})


def browser_playable(path: str, codec: Optional[str]) -> bool:
    """Whether a browser's <video> plays this file as it is (else: transcode or download link)."""
    return Path(path).suffix.lower() in PLAYABLE_CONTAINERS and (codec or "") in PLAYABLE_CODECS


def resolve_media(index: Index, relative: str) -> Optional[Path]:
    """The file of an indexed video, resolved now; None for anything the index does not list.

    Only paths the index holds are served. Without ``--follow-links`` the file must still lie
    inside the indexed folder (a link changed since indexing is refused); with it, the link
    the index lists is followed to wherever it points now.
    """
    row = index.db.execute("SELECT 1 FROM videos WHERE path = ? AND error IS NULL", (relative,)).fetchone()
    if row is None:
        return None
    root = Path(index.manifest.videos_root)
    target = (root / relative).resolve()
    if not index.manifest.follow_links and not target.is_relative_to(root.resolve()):
        return None  # a link that now leaves the folder
    return target if target.is_file() else None  # None: a file gone since indexing


def create_app(index: Index):
    """The FastAPI app over an open ``Index`` (searches are serialised: one model, one database)."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi import Path as InPath
    from fastapi.responses import FileResponse, HTMLResponse, Response

    app = FastAPI(title="lightning-frozen search", docs_url=None, redoc_url=None)
    lock = threading.Lock()
    page = (Path(__file__).with_name("page.html").read_text()
            .replace("__MAX_QUERY__", str(MAX_QUERY_CHARS)).replace("__DEFAULT_K__", str(DEFAULT_K)))
    codecs = dict(index.db.execute("SELECT path, codec FROM videos WHERE error IS NULL").fetchall())

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.get("/api/search")
    def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS),
               k: int = Query(10, ge=1, le=MAX_K),
               per: Literal["video", "clip"] = "video",
               aggregate: Literal["max", "mean"] = "max") -> list[dict]:
        if not q.strip():
            raise HTTPException(422, "the query is empty")
        vector = index.encode([q])[0]  # outside the lock: queries encode side by side
        with lock:
            hits = index.search_vector(vector, k, per, aggregate)
        return [{**hit.as_json(), "thumbnail": f"/thumbnail/{hit.window_id}.jpg",
                 "media": "/media/" + quote(hit.path), "playable": browser_playable(hit.path, codecs.get(hit.path))}
                for hit in hits]

    @app.get("/thumbnail/{window_id}.jpg")
    def thumbnail(window_id: int = InPath(ge=0, le=MAX_ROW_ID)) -> Response:
        with lock:
            jpeg = index.thumbnail(window_id)
        if jpeg is None:
            raise HTTPException(404, "no such thumbnail")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/{relative:path}")
    def media(relative: str, download: bool = False) -> FileResponse:
        with lock:
            target = resolve_media(index, relative)
        if target is None:
            raise HTTPException(404, "not an indexed video")
        return FileResponse(target, filename=target.name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    return app


def build_parser() -> Parser:
    parser = Parser(prog="lightning-frozen serve", description=__doc__)
    parser.add_argument("index", help="index folder made by `lightning-frozen index`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port, default=8000, help="TCP port (0: any free one)")
    parser.add_argument("--qb-norm-bank", help="text file of captions, one a line: QB-Norm with this query bank")
    return parser


def listen(host: str, port_number: int) -> socket.socket:
    """A socket bound and listening, or one message naming the address and the fix."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port_number))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port_number}: {error.strerror or error}; choose another --port "
                      "(or --port 0 for any free one), or stop what is using it") from None
    return sock


def main(argv: Optional[Sequence[str]] = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    bank = read_bank(args.qb_norm_bank) if args.qb_norm_bank else None
    sock = listen(args.host, args.port)  # first: a port in use is said before the model loads
    try:
        index = open_index(args.index, bank)
        try:
            print(f"serving {len(index)} windows of {index.manifest.videos_root} at "
                  f"http://{args.host}:{sock.getsockname()[1]}/", flush=True)
            uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning")).run(sockets=[sock])
        finally:
            index.close()
    finally:
        sock.close()
    return 0
