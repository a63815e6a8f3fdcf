"""The benchmark's baseline: the same model and framework, but every request is encoded alone
(no batching, no queue), as a first FastAPI wrapper around a model usually is.

    python benchmarks/naive_embedding_server.py --model-dir DIR --port N
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from llmops_workloads.embedding.config import ModelConfig
from llmops_workloads.embedding.model import EmbeddingModel


class Req(BaseModel):
    input: str | list[str]
    model: str | None = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    model = EmbeddingModel(ModelConfig(name=args.model_dir))
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embed(req: Req) -> dict[str, object]:  # a sync endpoint: FastAPI runs it in its thread pool
        texts = [req.input] if isinstance(req.input, str) else req.input
        ids = [model.truncate(t) for t in model.tokenize(texts)]
        vectors = [model.embed([t])[0] for t in ids]
        return {"object": "list", "data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
