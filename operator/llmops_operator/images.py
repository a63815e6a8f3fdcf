"""Default workload images: the one place their names and tags come from.

The tag follows the operator's version, so an operator always deploys the workloads it was
tested with. ``LLMOPS_IMAGE_REGISTRY`` and ``LLMOPS_IMAGE_TAG`` override both (the Helm chart
sets them); a resource's ``spec.image`` overrides everything for that resource.
"""

from __future__ import annotations

import os

from . import __version__

DEFAULT_REGISTRY = "ghcr.io/llmops-dev"
OPERATOR = "llmops-operator"
WORKLOADS = "llmops-workloads"


def _registry() -> str:
    return os.environ.get("LLMOPS_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")


def _tag() -> str:
    return os.environ.get("LLMOPS_IMAGE_TAG", __version__)


def operator_image() -> str:
    return f"{_registry()}/{OPERATOR}:{_tag()}"


def workload_image(gpu: bool) -> str:
    """The CUDA build for GPU pods, the smaller CPU build otherwise."""
    return f"{_registry()}/{WORKLOADS}:{_tag()}-{'cuda' if gpu else 'cpu'}"
