"""Training callbacks: the frame curriculum, last.ckpt and exact resume, training curves and the embedding writer."""
from .curriculum import FrameCurriculum, Stage
from .curves import TrainingCurves
from .embeddings import EmbeddingWriter
from .last_checkpoint import LastCheckpoint
from .resume import ExactResume

__all__ = ["EmbeddingWriter", "ExactResume", "FrameCurriculum", "LastCheckpoint", "Stage", "TrainingCurves"]
