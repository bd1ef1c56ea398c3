"""Search your own videos by text: ``build_index`` (windows -> embeddings -> SQLite + FAISS),
``Index.search`` (ranked videos or windows with times and scores) and a web page (``server``).

    from lightning_frozen.search import Index, build_index
    build_index("my_videos", "my_index", "runs/demo/.../stage1-4f-best.ckpt")
    Index("my_index").search("a dog catches a frisbee", k=5)

Names load on first use: a query (``Index``) never imports Lightning nor the indexing code.
"""
_LAZY = {
    "Index": ".query", "Hit": ".query",
    "build_index": ".index", "IndexSummary": ".index",
    "IndexMismatchError": ".store", "DamagedIndexError": ".store", "IndexBusyError": ".store",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
