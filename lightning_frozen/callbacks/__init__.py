"""Training callbacks: the frame curriculum, last.ckpt and exact resume, training curves, the embedding writer,
the run folder and the model summary."""
from .curriculum import FrameCurriculum, Stage
from .curves import TrainingCurves
from .embeddings import EmbeddingWriter
from .last_checkpoint import LastCheckpoint
from .resume import ExactResume
from .run_folder import RunFolder
from .summary import ParameterSummary

__all__ = ["EmbeddingWriter", "ExactResume", "FrameCurriculum", "LastCheckpoint", "ParameterSummary", "RunFolder",
           "Stage", "TrainingCurves"]
