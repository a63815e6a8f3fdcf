from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from llmops_workloads.embedding.config import EmbeddingServerConfig


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_operators_config_file_loads(tmp_path: Path) -> None:
    """The exact shape the operator's ConfigMap holds (docs/embedding-server.md)."""
    path = write(
        tmp_path,
        {
            "model": {
                "name": "m",
                "revision": "main",
                "normalize": True,
                "dtype": "auto",
                "quantization": "none",
                "maxInputTokens": 128,
                "pooling": "cls",
                "path": "/models/m",
            },
            "batching": {"maxBatchSize": 8, "maxBatchTokens": 4096, "maxWaitMillis": 3, "maxConcurrentRequests": 99},
            "server": {"host": "0.0.0.0", "port": 8080, "metricsPort": 9090},
            "auth": {"apiKeyFile": "/var/run/secrets/llmops/api-key"},
        },
    )
    cfg = EmbeddingServerConfig.load(path)
    assert cfg.model.max_input_tokens == 128
    assert cfg.model.pooling == "cls"
    assert cfg.batching.max_concurrent_requests == 99
    assert cfg.server.metrics_port == 9090
    assert cfg.auth.api_key_file == "/var/run/secrets/llmops/api-key"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"model": {"name": "m"}, "batching": {"maxBatchSize": 8, "maxWaitMillis": 3}})
    monkeypatch.setenv("LLMOPS_BATCHING__MAX_BATCH_SIZE", "64")
    cfg = EmbeddingServerConfig.load(path)
    assert cfg.batching.max_batch_size == 64
    assert cfg.batching.max_wait_millis == 3  # the rest of the section still comes from the file


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"model": {"name": "m"}, "batching": {"maxBatchSize": 0}}, "max_batch_size"),
        ({"model": {"name": "m", "pooling": "max"}}, "pooling"),
        ({"model": {"name": "m"}, "batching": {"maxBatchSise": 4}}, "max_batch_sise"),
        ({"batching": {}}, "model"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        EmbeddingServerConfig.load(write(tmp_path, data))
