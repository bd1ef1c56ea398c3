"""Search your own videos by text: ``build_index`` (windows -> embeddings -> SQLite + FAISS),
``Index.search`` (ranked videos or windows with times and scores) and a web page (``server``).

    from lightning_frozen.search import Index, build_index
    build_index("my_videos", "my_index", "runs/demo/.../stage1-4f-best.ckpt")
    Index("my_index").search("a dog catches a frisbee", k=5)
"""
from .encoder import Encoder, load_encoder
from .index import IndexSummary, build_index
from .query import Hit, Index
from .store import IndexMismatchError

__all__ = ["Encoder", "Hit", "Index", "IndexMismatchError", "IndexSummary", "build_index", "load_encoder"]
