"""Training callbacks: the frame curriculum and the embedding writer."""
from .curriculum import FrameCurriculum, Stage
from .embeddings import EmbeddingWriter

__all__ = ["EmbeddingWriter", "FrameCurriculum", "Stage"]
