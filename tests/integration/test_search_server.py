"""`lightning-frozen serve` against a running server on loopback: API, range requests, path
safety (traversal, encoded, absolute, symlinks), caps, and a bounded load test."""
import http.client
import json
import os
import shutil
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.search import SCRIPT_NAME, free_port, save_tiny_checkpoint, start_server, video_folder

from lightning_frozen.search import build_index
from lightning_frozen.search.index import LINK_OUTSIDE
from lightning_frozen.search.server import MAX_K, MAX_QUERY_CHARS, build_parser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small index with a script-named file, an MKV the browser cannot play and links in and out."""
    base = tmp_path_factory.mktemp("served")
    videos = video_folder(base / "videos", count=4, frames=30)
    first = sorted(videos.rglob("*.mp4"))[0]
    (videos / SCRIPT_NAME).parent.mkdir()  # the '/' of '</script>' makes a folder: the path is the name
    shutil.copy(first, videos / SCRIPT_NAME)
    shutil.copy(first, videos / "old format.mkv")
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(first, outside / "secret.mp4")
    os.symlink(outside / "secret.mp4", videos / "escape.mp4")
    os.symlink(first, videos / "inside-link.mp4")
    (videos / "notes.txt").write_text("not a video")
    ckpt = save_tiny_checkpoint(base / "tiny.ckpt")
    summary = build_index(videos, base / "index", ckpt, batch_size=8, progress=False)
    assert dict(summary.unreadable) == {"escape.mp4": LINK_OUTSIDE}
    port = free_port()
    process = start_server(base / "index", port)
    yield videos, port
    process.terminate()
    process.wait(timeout=30)


def get(port, path, headers=None):
    """A raw GET (the path is sent as given: no client-side normalisation of '..')."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def search(port, q, k=10):
    status, _, body = get(port, "/api/search?" + urllib.parse.urlencode({"q": q, "k": k}))
    assert status == 200, body
    return json.loads(body)


def test_api_returns_ranked_results_with_media_and_thumbnails(served):
    videos, port = served
    hits = search(port, "a white circle moving left", k=20)
    assert len(hits) == 8  # 5 synthetic + script name + mkv + inside link; never the escaping link
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {"path", "start", "end", "score"} <= set(hits[0])
    by_path = {h["path"]: h for h in hits}
    assert SCRIPT_NAME in by_path and "escape.mp4" not in by_path
    assert by_path["old format.mkv"]["playable"] is False and by_path[SCRIPT_NAME]["playable"] is True
    status, headers, jpeg = get(port, hits[0]["thumbnail"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    status, _, body = get(port, by_path[SCRIPT_NAME]["media"])
    assert status == 200 and body == (videos / SCRIPT_NAME).read_bytes()


def test_media_supports_range_requests(served):
    videos, port = served
    path = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("1*.mp4"))[0]
    data = (videos / path).read_bytes()
    status, headers, body = get(port, "/media/" + urllib.parse.quote(path), {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"
    status, headers, _ = get(port, "/media/old%20format.mkv?download=1")
    assert status == 200 and headers["content-disposition"].startswith("attachment")


@pytest.mark.parametrize("path", [
    "/media/../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd", "/media/%2e%2e/%2e%2e/etc/passwd",
    "/media//etc/passwd", "/media/%2Fetc%2Fpasswd", "/media/escape.mp4", "/media/notes.txt",
    "/media/000001_000050/../../outside/secret.mp4", "/media/000001_000050/%2e%2e/%2e%2e/outside/secret.mp4",
    "/thumbnail/999999.jpg",
])
def test_anything_but_an_indexed_file_inside_the_folder_is_404(served, path):
    _, port = served
    status, _, body = get(port, path)
    assert status == 404, (path, status)
    assert b"root:" not in body


@pytest.mark.parametrize("path", [
    "/thumbnail/99999999999999999999999999.jpg", "/thumbnail/-1.jpg", "/thumbnail/1e3.jpg", "/thumbnail/0x10.jpg",
    "/api/search?q=circle&k=99999999999999999999999", "/api/search?q=%20%20%20", "/api/search?q=circle&k=1.5",
])
def test_a_number_or_query_that_cannot_be_one_is_422_never_500(served, path):
    _, port = served
    status, _, body = get(port, path)
    assert status == 422, (path, status, body[:200])


def test_links_inside_the_folder_are_served(served):
    videos, port = served
    status, _, body = get(port, "/media/inside-link.mp4")
    assert status == 200 and body == (videos / "inside-link.mp4").read_bytes()


def test_query_length_and_k_are_capped(served):
    _, port = served
    assert get(port, "/api/search?" + urllib.parse.urlencode({"q": "x" * (MAX_QUERY_CHARS + 1)}))[0] == 422
    for k in (0, MAX_K + 1):
        assert get(port, f"/api/search?q=circle&k={k}")[0] == 422
    assert get(port, "/api/search?q=")[0] == 422
    assert len(search(port, "x" * MAX_QUERY_CHARS, k=MAX_K)) == 8


def test_page_is_static_and_names_no_file(served):
    _, port = served
    status, headers, body = get(port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<script>alert" not in body and b"textContent" in body


def test_binds_loopback_unless_told_otherwise():
    assert build_parser().parse_args(["idx"]).host == "127.0.0.1"


def test_load_eight_clients_a_few_hundred_queries_no_errors(served):
    _, port = served
    clients, per_client = 8, 40
    errors, latencies = [], []
    lock = threading.Lock()
    words = ["red", "green", "white", "circle", "square", "moving left", "falling", "blue background"]

    def client(number):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(per_client):
            q = urllib.parse.urlencode({"q": f"a {words[(number + i) % 8]} {words[i % 8]}", "k": 5})
            started = time.perf_counter()
            try:
                connection.request("GET", f"/api/search?{q}")
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and len(json.loads(body)) == 5
            except (OSError, ValueError) as error:
                ok, body = False, repr(error).encode()
            with lock:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors.append(body[:200])
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:  # every request has a 30 s timeout: the test stops by itself
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    assert errors == []
    assert len(latencies) == clients * per_client
    print(f"\n{len(latencies)} queries from {clients} clients in {elapsed:.1f} s: {len(latencies) / elapsed:.0f} q/s")
