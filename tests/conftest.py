"""Shared test setup: offline hub, CPU threads, and the cached tiny model bundle."""

import os

# Must happen before anything imports huggingface_hub, or hub ids wait on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
