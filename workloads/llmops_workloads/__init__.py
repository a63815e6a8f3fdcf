"""llmops workloads: the embedding, RAG and generation servers and the fine-tuning trainer.

This package must never import kopf: the workloads run without the operator.
"""

__version__ = "0.1.0"
