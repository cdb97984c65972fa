"""Shared test setup: offline hub, CPU threads, and the cached tiny model bundle."""

import contextlib
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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the tiny models are overhead-bound, so one is as fast, and
    immune to a busy machine's oversubscription. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def components(one_thread):
    """The tiny bundle loaded through ``load_components`` as configs/tiny.yaml names it, once per module."""
    from pathlib import Path

    from motia.config import load_config
    from motia.models import load_components

    return load_components(load_config(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml").models)


# `motia app` on the tiny config, small enough that adapt + outpaint take seconds.
APP_OVERRIDES = ["video.max_frames=8", "adapt.steps=2", "sample.steps=2", "sample.regret.repeats=0"]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """`motia app configs/tiny.yaml` served at 127.0.0.1 on a free port, in its own process.

    Yields ``(url, folder)``: the server runs in ``folder``; outputs go to ``folder/outputs``, adapters to
    ``folder/adapters``, gradio's uploads to ``folder/gradio``; the server's log is
    ``folder/app.log``.
    """
    with serve_app(tmp_path_factory.mktemp("app")) as served:
        yield served


@contextlib.contextmanager
def serve_app(folder, host: str = "127.0.0.1", args=(), env=None):
    """`motia app configs/tiny.yaml --host HOST ARGS` run in ``folder`` on a free port until the block ends;
    yields ``(url, folder)`` with the url on 127.0.0.1 (``app_server``'s layout)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    pytest.importorskip("gradio", reason='the app tests need gradio: pip install "motia[app]"')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Started from its own folder as a user would, with the repo's configs/ beside it: the page then shows
    # short paths (configs/tiny.yaml, outputs/...), also in the README's screenshot.
    (folder / "configs").symlink_to(Path(__file__).resolve().parent.parent / "configs", target_is_directory=True)
    env = {**{k: v for k, v in os.environ.items() if k != "MOTIA_APP_AUTH"}, "MOTIA_ADAPTERS": str(folder / "adapters"),
           "GRADIO_TEMP_DIR": str(folder / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}  # fmt: skip
    cmd = [sys.executable, "-m", "motia", "app", "configs/tiny.yaml", "--host", host, "--port", str(port), *args,
           *APP_OVERRIDES, "output.dir=outputs"]  # fmt: skip
    log = open(folder / "app.log", "w")
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"motia app exited with {proc.returncode}:\n{(folder / 'app.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/config", timeout=5):
                    break
            except urllib.error.HTTPError:  # it answers (a page behind a login says 401)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"motia app did not answer in 120 s:\n{(folder / 'app.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
