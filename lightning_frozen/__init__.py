"""lightning-frozen: Frozen-in-Time text-video retrieval as a PyTorch Lightning project.

Imports stay light: the model, data and IPU packages load on demand.
"""
__version__ = "0.1.0"
