"""Shared test setup: offline hub, CPU threads, and the cached tiny model bundle."""

import os

# Must happen before anything imports huggingface_hub, or hub ids wait on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a shared 2-core box two
# threads per process contend badly (a tiny UNet forward went from ~3 s to ~50 s).
# Parallelism comes from pytest-xdist workers instead (see Makefile).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle():
    """The tiny model bundle folder, built once into the user cache and reused across runs (version-keyed)."""
    from motia.models.tiny import ensure_tiny_bundle

    return ensure_tiny_bundle()
