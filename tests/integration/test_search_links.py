"""A library folder made of links to videos kept elsewhere: refused by name without --follow-links
(the run fails, naming the option), indexed under the library's paths with it, and served by
resolving each listed link when it is asked for."""
import os

import pytest
from helpers.catalogue import run_command
from helpers.search import save_tiny_checkpoint, video_folder

from lightning_frozen.search import Index
from lightning_frozen.search.index import BROKEN_LINK, FOLDER_LINK_OUTSIDE, LINK_OUTSIDE
from lightning_frozen.search.server import resolve_media


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """library/first.mp4 -> a video elsewhere, library/shelf -> a folder of videos elsewhere,
    library/loop -> library itself, library/broken.mp4 -> nothing."""
    base = tmp_path_factory.mktemp("links")
    kept = video_folder(base / "kept", count=3, frames=20)
    shelf = next(kept.iterdir())
    files = sorted(shelf.glob("*.mp4"))
    library = base / "library"
    library.mkdir()
    os.symlink(files[0], library / "first.mp4")
    os.symlink(shelf, library / "shelf")
    os.symlink(library, library / "loop")
    os.symlink(base / "nowhere.mp4", library / "broken.mp4")
    return base, library, files, save_tiny_checkpoint(base / "tiny.ckpt")


def test_links_are_refused_by_name_then_followed_with_the_option(library):
    base, library_dir, files, ckpt = library
    command = ["index", "--ckpt", str(ckpt), "--videos", str(library_dir), "--out", str(base / "index"),
               "--window-seconds", "1", "--no-progress"]
    code, output = run_command(command)
    assert code == 1, output
    assert f"first.mp4: {LINK_OUTSIDE}" in output and f"shelf/: {FOLDER_LINK_OUTSIDE}" in output
    assert f"broken.mp4: {BROKEN_LINK}" in output
    assert "indexed no video" in output and "run again with --follow-links" in output

    code, output = run_command([*command, "--follow-links"])  # the same folder, as the message says
    assert code == 0, output
    shelved = sorted(f"shelf/{p.name}" for p in files)
    index = Index(base / "index")
    try:
        listed = {row[0] for row in index.db.execute("SELECT path FROM videos WHERE error IS NULL")}
        assert listed == {"first.mp4", *shelved}  # under the library's paths; the loop walked once
        assert dict(index.db.execute("SELECT path, error FROM videos WHERE error IS NOT NULL")) == \
            {"broken.mp4": BROKEN_LINK}
        assert {hit.path for hit in index.search("a red square", k=10)} == listed
        assert resolve_media(index, "first.mp4") == files[0].resolve()
        assert resolve_media(index, f"../kept/{files[1].parent.name}/{files[1].name}") is None  # not listed
        os.remove(library_dir / "first.mp4")
        os.symlink(files[1], library_dir / "first.mp4")   # re-pointed after indexing: followed when asked for
        assert resolve_media(index, "first.mp4") == files[1].resolve()
    finally:
        index.close()
