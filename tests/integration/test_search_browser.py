"""The search page in a real browser: Debian's headless Chromium driven by Playwright.

Skipped (with the reason shown) where /usr/bin/chromium is absent; CI installs it (.ci/run).
"""
import shutil
from pathlib import Path

import pytest
from helpers.search import SCRIPT_NAME, free_port, save_tiny_checkpoint, start_server, video_folder

from lightning_frozen.search import Index, build_index

CHROMIUM = Path("/usr/bin/chromium")
# This network is closed: nothing in the browser may try to reach the outside.
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Chromium is absent: apt-get install -y chromium "
                                                                "(.ci/run installs it)")


def test_page_search_shows_ranked_cards_that_play_the_right_window(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    videos = video_folder(tmp_path / "videos", count=5, frames=40)
    (videos / SCRIPT_NAME).parent.mkdir()
    shutil.copy(sorted(videos.rglob("*.mp4"))[0], videos / SCRIPT_NAME)
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.ckpt")
    build_index(videos, tmp_path / "index", ckpt, window_seconds=1.0, batch_size=8, progress=False)
    query = "a yellow square moving to the right"
    index = Index(tmp_path / "index")
    expected = index.search(query, k=12)
    index.close()
    port = free_port()
    server = start_server(tmp_path / "index", port)
    dialogs = []
    try:
        with playwright_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=LAUNCH_FLAGS,
                viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#query", query)
            page.press("#query", "Enter")
            page.wait_for_selector(".card", timeout=60_000)
            page.wait_for_function("[...document.querySelectorAll('.card img.thumb')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)", timeout=60_000)
            paths = page.eval_on_selector_all(".card .path", "nodes => nodes.map(n => n.textContent)")
            first_video = page.eval_on_selector(".card video", "v => v.getAttribute('src')")
            widths = page.eval_on_selector_all(".card img.thumb", "imgs => imgs.map(i => i.naturalWidth)")
            page.screenshot(path=str(tmp_path / "search_page.png"), full_page=True)
            context.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert paths == [hit.path for hit in expected]
    assert SCRIPT_NAME in paths and dialogs == []        # the script name shows as text and never runs
    assert all(width == 128 for width in widths)
    first = expected[0]
    from urllib.parse import quote

    assert first_video == f"/media/{quote(first.path)}#t={first.start:g},{first.end:g}"
    assert (tmp_path / "search_page.png").stat().st_size > 10_000
