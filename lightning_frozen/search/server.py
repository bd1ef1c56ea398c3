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

import argparse
import threading
from pathlib import Path
from typing import Literal, Optional, Sequence
from urllib.parse import quote

from .query import Index, query_threads, read_bank
from .windows import browser_playable

MAX_QUERY_CHARS = 300
MAX_K = 100
DEFAULT_K = 12


def resolve_media(index: Index, relative: str) -> Optional[Path]:
    """The file of an indexed video, or None for anything that is not one inside the folder."""
    row = index.db.execute("SELECT 1 FROM videos WHERE path = ? AND error IS NULL", (relative,)).fetchone()
    if row is None:
        return None
    root = Path(index.manifest.videos_root).resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None  # a link that now leaves the folder, or a file gone since indexing
    return target


def create_app(index: Index):
    """The FastAPI app over an open ``Index`` (searches are serialised: one model, one database)."""
    from fastapi import FastAPI, HTTPException, Query
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
        vector = index.encoder.encode_text([q])[0]  # outside the lock: queries encode side by side
        with lock:
            hits = index.search_vector(vector, k, per, aggregate)
        return [{**hit.as_json(), "thumbnail": f"/thumbnail/{hit.window_id}.jpg",
                 "media": "/media/" + quote(hit.path), "playable": browser_playable(hit.path, codecs.get(hit.path))}
                for hit in hits]

    @app.get("/thumbnail/{window_id}.jpg")
    def thumbnail(window_id: int) -> Response:
        with lock:
            row = index.db.execute("SELECT jpeg FROM thumbnails WHERE window_id = ?", (window_id,)).fetchone()
        if row is None:
            raise HTTPException(404, "no such thumbnail")
        return Response(row[0], media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/{relative:path}")
    def media(relative: str, download: bool = False) -> FileResponse:
        with lock:
            target = resolve_media(index, relative)
        if target is None:
            raise HTTPException(404, "not an indexed video")
        return FileResponse(target, filename=target.name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-frozen serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder made by `lightning-frozen index`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--qb-norm-bank", help="text file of captions, one a line: QB-Norm with this query bank")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    query_threads()
    index = Index(args.index)
    if args.qb_norm_bank:
        index.set_query_bank(read_bank(args.qb_norm_bank))
    print(f"serving {len(index)} windows of {index.manifest.videos_root} at http://{args.host}:{args.port}/",
          flush=True)
    uvicorn.run(create_app(index), host=args.host, port=args.port, log_level="warning")
    index.close()
    return 0
