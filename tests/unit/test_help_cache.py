"""Subcommand help kept between calls: printed from the cache, rebuilt when its key changes, not kept on failure."""
import pytest

from lightning_frozen import help_cache
from lightning_frozen.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "100")
    return tmp_path / "lightning-frozen" / "help"


def test_a_kept_help_is_printed_without_building_it(cache, capsys):
    help_cache.cache_path("fit").parent.mkdir(parents=True)
    help_cache.cache_path("fit").write_text("usage: lightning-frozen fit (kept)\n")
    main(["fit", "--help"])  # building it would print LightningCLI's usage
    assert capsys.readouterr().out == "usage: lightning-frozen fit (kept)\n"


def test_a_built_help_is_kept_and_replaces_older_texts(cache, capsys):
    cache.mkdir(parents=True)
    (cache / "synthetic-0123.txt").write_text("usage: of an earlier version\n")
    calls = []

    def build():
        calls.append(1)
        print("usage: lightning-frozen synthetic [-h]")
        raise SystemExit(0)

    assert help_cache.print_help("synthetic", build) == 0
    assert help_cache.print_help("synthetic", build) == 0
    assert calls == [1]
    assert capsys.readouterr().out == "usage: lightning-frozen synthetic [-h]\n" * 2
    assert [p.name for p in cache.iterdir()] == [help_cache.cache_path("synthetic").name]


def test_a_failed_help_is_shown_and_not_kept(cache, capsys):
    def build():
        print("usage: lightning-frozen shard ...\nerror: broken")
        raise SystemExit(2)

    assert help_cache.print_help("shard", build) == 2
    assert "error: broken" in capsys.readouterr().out
    assert not cache.exists() or not list(cache.iterdir())


def test_the_key_follows_the_command_and_the_terminal_width(cache, monkeypatch):
    wide = help_cache.cache_path("fit")
    assert help_cache.cache_path("fit") == wide and help_cache.cache_path("test") != wide
    monkeypatch.setenv("COLUMNS", "80")
    assert help_cache.cache_path("fit") != wide


def test_a_help_that_returns_a_failing_code_is_not_kept(cache, capsys):
    def build():
        print("usage: lightning-frozen index ...")
        return 1

    assert help_cache.print_help("index", build) == 1
    assert not cache.exists() or not list(cache.iterdir())
