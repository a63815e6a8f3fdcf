"""llmops operator: reconciles EmbeddingService, RAGPipeline and FineTuneJob resources (kopf).

This package must never import torch or transformers: it installs without them.
"""

__version__ = "0.1.0"
