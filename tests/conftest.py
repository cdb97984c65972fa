"""Shared test setup: offline hub, CPU threads, and the cached tiny model bundle."""

import os

# Must happen before anything imports huggingface_hub, or hub ids wait on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle():
    """The tiny model bundle folder, built once into the user cache and reused across runs (version-keyed)."""
    from motia.models.tiny import ensure_tiny_bundle

    return ensure_tiny_bundle()
