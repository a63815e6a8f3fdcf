"""The ConfigMap that holds the server's config file (what ``--config`` reads)."""

from __future__ import annotations

from typing import Any

import yaml

from .common import Workload, meta


def config_file(w: Workload) -> str:
    return yaml.safe_dump(w.config, sort_keys=True)


def build(w: Workload) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(w, w.config_map_name),
        "data": {"config.yaml": config_file(w)},
    }
