"""Sentence embeddings computed in process: all-MiniLM-L6-v2 on ONNX Runtime, no torch.

Imports nothing from FastAPI, Starlette, SQLAlchemy or other mainsail packages except
``mainsail.core.logging``.
"""

from mainsail.embeddings.base import Embedder
from mainsail.embeddings.local import (
    LocalEmbedder,
    ModelNotInstalled,
    load_local_embedder,
    model_dir,
)

__all__ = ["Embedder", "LocalEmbedder", "ModelNotInstalled", "load_local_embedder", "model_dir"]
