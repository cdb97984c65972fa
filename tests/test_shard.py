"""motia.shard: a step's model calls dealt over processes, the predictions gathered in the boxes' order.

The gather tests run two real gloo processes (torch.multiprocessing, spawn) once for the
module; each checks its yielded predictions against the ones computed locally and writes
what it saw to a file the tests read.
"""

import os

import pytest
import torch

from motia.shard import describe_split, owners, split_calls
from motia.tiles import Box, boxes, spatial_tiles
from motia.windows import temporal_windows


def test_owners_deal_round_robin_across_steps():
    assert owners(0, 5, 2) == [0, 1, 0, 1, 0]
    assert owners(5, 3, 2) == [1, 0, 1]  # the next step starts where the last one stopped
    for world in (2, 3, 8):
        start = 0
        for n in (1, 7, 8, 9, 16, 3):
            per = [owners(start, n, world).count(r) for r in range(world)]
            assert max(per) - min(per) <= 1 and sum(per) == n  # the slowest at most one call more
            start += n
    assert split_calls([3] * 13, 2) == [20, 19]
    assert split_calls([0, 1], 4) == [1, 0, 0, 0]


def test_describe_split():
    d = describe_split([("coarse", 3, 13)], 2)
    assert d["per_process"] == [20, 19]
    assert d["per_step"] == {"coarse": "3 call(s) per step: 1 of 2 processes run 2, the others 1 (which ones run "
                                       "the extra call rotates)"}  # fmt: skip
    assert describe_split([("coarse", 4, 2)], 2)["per_step"]["coarse"] == "4 call(s) per step: 2 per process"
    assert "6 of 8 processes idle" in describe_split([("coarse", 2, 5)], 8)["note"]
    assert describe_split([("coarse", 2, 5)], 1)["per_process"] == [10]
    # the dealing goes on from one stage into the next, as one Shard serves both
    two = describe_split([("coarse", 3, 3), ("refine", 5, 2)], 2)
    assert two["per_process"] == split_calls([3, 3, 3, 5, 5], 2) == [10, 9]
    assert set(two["per_step"]) == {"coarse", "refine"}


# ----------------------------------------------------------------------------- two gloo processes


def _call(box: Box, guided: bool = False) -> torch.Tensor:
    """A prediction unique to the box (shape and values), doubled batch when guided."""
    (s, e), (t, l, b, r) = box
    n = 2 if guided else 1
    base = torch.arange(n * 4 * (e - s) * (b - t) * (r - l), dtype=torch.float32).view(n, 4, e - s, b - t, r - l)
    return torch.sin(base * 0.01 + 1000 * s + 100 * t + 10 * l + 1)


# Steps of different box lists: windows of different lengths, tiles of different sizes, one box,
# none at all (every box known), a guided (doubled) batch.
STEPS = [
    (boxes(temporal_windows(12, 8, 4), spatial_tiles(10, 14, 6, 2)), False),  # 2 x 6 = 12 boxes
    (boxes([(0, 8), (4, 12), (9, 12)], [(0, 0, 10, 14), (0, 0, 3, 5)]), True),  # uneven shapes, guided
    ([Box((0, 12), (0, 0, 10, 14))], False),  # one box: process 1 idles
    ([], False),  # all known: nothing to call
    (boxes([(0, 8), (4, 12), (8, 12)], [(0, 0, 10, 14)]), False),  # odd count: the extra one rotates
]


class FakeModel:
    """eps from x, t, the box's global frames and cells (a wrong crop or order changes it); records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond, window):
        (start, end), (top, left, bottom, right) = window, cond["tile"]
        self.calls.append((window, cond["tile"]))
        f = torch.arange(start, end, dtype=torch.float32).view(1, 1, -1, 1, 1)
        y = torch.arange(top, bottom, dtype=torch.float32).view(1, 1, 1, -1, 1)
        xx = torch.arange(left, right, dtype=torch.float32).view(1, 1, 1, 1, -1)
        eps = 0.3 * torch.tanh(x) + 0.001 * t.float() * torch.cos(f + 0.7 * y - 0.3 * xx)
        if cond["guided"]:
            eps[x.shape[0] // 2 :] += 0.2
        return eps


def fake_sample_inputs():
    """A sampler run with windows, 2 x 3 tiles (two of them all known: skipped), guidance, regret and a
    known blend with fresh noise from the generator at every step (every process draws the same)."""
    g = torch.Generator().manual_seed(5)
    shape = (1, 4, 12, 10, 14)  # (B, C, F, h, w)
    noise, known = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = torch.zeros(shape[-2:])
    mask[:, 4:10] = 1.0  # tiles (0, 4, 6, 10) and (4, 4, 10, 10) are all known
    alphas = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000), 0)
    kwargs = dict(latents=noise, timesteps=torch.tensor([801, 601, 401, 201, 1]), alphas_cumprod=alphas,
                  windows=temporal_windows(12, 8, 4), tiles=spatial_tiles(10, 14, 6, 2), guidance_scale=3.0,
                  guidance_steps=3, known_latents=known, known_mask=mask, regret_jump=2, regret_repeats=1,
                  generator=torch.Generator().manual_seed(7))  # fmt: skip
    return FakeModel(), kwargs


class Dropping:
    """A broken gather: another process's prediction replaced by this process's own (one dropped)."""

    def __init__(self, shard):
        self.shard = shard
        real = shard._gather

        def gather(pred, *args):
            out = real(pred, *args)
            return [pred.float() if pred is not None and p.shape == pred.shape else p for p in out]

        shard._gather = gather


def _worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    from motia.errors import MotiaError
    from motia.sampler import run_in_order, sample
    from motia.shard import Shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    seen = {}

    # 1. the real gather: predictions equal to the local ones, in order, on every process
    called = []
    shard = Shard(rank, world, "cpu")
    ok = []
    for run, guided in STEPS:
        def call(box, guided=guided):
            called.append(box)
            return _call(box, guided)

        got = list(shard(run, call))
        want = [_call(box, guided) for box in run]
        ok.append(len(got) == len(want) and all(g.dtype == torch.float32 and torch.equal(g, w)
                                                for g, w in zip(got, want)))  # fmt: skip
    seen["real"] = {"ok": ok, "called": called, "calls": shard.calls, "per_process": shard.calls_per_process}

    # 2. broken gathers must be caught by the same comparison: one drops a peer's prediction,
    #    one yields a round in reverse order
    for name in ("dropped", "reversed"):
        broken = Shard(rank, world, "cpu")
        if name == "dropped":
            Dropping(broken)
        else:
            real = broken._gather
            broken._gather = lambda *a, real=real: real(*a)[::-1]
        run = STEPS[0][0]
        got = list(broken(run, _call))
        seen[name] = len(got) == len(run) and all(torch.equal(g, _call(b)) for g, b in zip(got, run))

    # 3. the sampler with windows, tiles, guidance, regret and the known blend: the same latents
    model, kwargs = fake_sample_inputs()
    local = sample(model, **kwargs, run_boxes=run_in_order)
    sharded_model, kwargs = fake_sample_inputs()
    shard = Shard(rank, world, "cpu")
    sharded = sample(sharded_model, **kwargs, run_boxes=shard)
    seen["sample"] = {"equal": torch.equal(local, sharded), "calls": shard.calls_per_process,
                      "local_calls": len(model.calls), "my_calls": len(sharded_model.calls)}  # fmt: skip

    # 4. a call that raises on process 1 stops both: its own error there, one line naming it here
    shard = Shard(rank, world, "cpu")

    def failing(box):
        if rank == 1 and box.window == (4, 12):
            raise RuntimeError("out of memory (test)")
        return _call(box)

    try:
        list(shard(boxes(temporal_windows(12, 8, 4), [(0, 0, 10, 14)]), failing))
        seen["failure"] = None
    except MotiaError as e:
        seen["failure"] = ("MotiaError", str(e))
    except RuntimeError as e:
        seen["failure"] = ("RuntimeError", str(e))

    # 5. processes that disagree on a step's boxes stop rather than blend the wrong predictions
    shard = Shard(rank, world, "cpu")
    try:
        list(shard(STEPS[0][0][: 12 - rank], _call))
        seen["out_of_step"] = None
    except MotiaError as e:
        seen["out_of_step"] = str(e)

    # 6. a process that dies: the other stops at its next gather, naming it
    torch.save(seen, os.path.join(folder, f"rank{rank}.pt"))
    if rank == 1:
        os._exit(0)  # no goodbye: as a killed process
    shard = Shard(rank, world, "cpu")
    try:
        list(shard(STEPS[0][0], _call))
        seen["peer_died"] = None
    except MotiaError as e:
        seen["peer_died"] = str(e)
    torch.save(seen, os.path.join(folder, f"rank{rank}.pt"))
    os._exit(0)  # a group with a dead peer cannot be torn down cleanly (gloo aborts at exit)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("shard")
    mp.start_processes(_worker, args=(2, str(folder)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_gathered_predictions_equal_local_ones_in_order(two_processes):
    for seen in two_processes:
        assert seen["real"]["ok"] == [True] * len(STEPS)
    everything = [box for run, _ in STEPS for box in run]
    mine = [seen["real"]["called"] for seen in two_processes]
    assert sorted(mine[0] + mine[1]) == sorted(everything)  # each box called once, by one process
    assert mine[0] == everything[0::2] and mine[1] == everything[1::2]  # round robin over the whole run
    counts = [seen["real"]["calls"] for seen in two_processes]
    assert counts == [len(mine[0]), len(mine[1])] == split_calls([len(run) for run, _ in STEPS], 2)
    assert two_processes[0]["real"]["per_process"] == two_processes[1]["real"]["per_process"] == counts


def test_a_dropped_or_reordered_prediction_is_caught(two_processes):
    # The comparison above, run against deliberately broken gathers, fails on each of them.
    for seen in two_processes:
        assert seen["dropped"] is False and seen["reversed"] is False


def test_sharded_sampler_is_bit_identical(two_processes):
    for seen in two_processes:
        s = seen["sample"]
        assert s["equal"], "the sharded sampler's latents differ from one process's"
        assert s["calls"][0] + s["calls"][1] == s["local_calls"] and abs(s["calls"][0] - s["calls"][1]) <= 1
        assert s["my_calls"] in s["calls"]


def test_a_failing_process_stops_the_others_naming_it(two_processes):
    kind0, msg0 = two_processes[0]["failure"]
    kind1, msg1 = two_processes[1]["failure"]
    assert (kind1, msg1) == ("RuntimeError", "out of memory (test)")  # its own error
    assert kind0 == "MotiaError"
    assert msg0 == "process 1 of 2 failed (RuntimeError: out of memory (test)); every process stopped"


def test_a_process_that_dies_stops_the_other_naming_it(two_processes):
    assert two_processes[0]["peer_died"].startswith(
        "process 0 of 2 stopped: process 1 stopped while the predictions were gathered (")


def test_processes_out_of_step_are_refused(two_processes):
    for seen in two_processes:
        assert "the processes are out of step" in seen["out_of_step"]


# ----------------------------------------------------------------------------- the command, launched


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Temporal windows (16 frames, 8 a window, stride 4: 3), 64 px spatial tiles over the 144 px canvas
# (4, the ones inside the source skipped), guidance, noise regret and the known blend (always on).
LAUNCH_OVERRIDES = ["video.max_frames=16", "sample.tiles.enabled=true", "sample.tiles.size=64",
                    "sample.tiles.overlap=32", "output.frames=true"]  # fmt: skip


def _launch(args: list[str], cwd, processes: int):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    # `--cpu` starts one process (several only through MPI); `--multi_gpu` starts torchrun's, gloo without CUDA.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), "-m", "motia"]  # fmt: skip
    cmd = launcher + args if processes > 1 else [sys.executable, "-m", "motia", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_write_the_frames_one_process_writes(tmp_path):
    import json

    tiny = os.path.join(REPO, "configs", "tiny.yaml")
    runs = {}
    for n in (1, 2):
        _launch(["outpaint", tiny, *LAUNCH_OVERRIDES, f"output.dir={tmp_path / str(n)}"], tmp_path, n)
        folder = tmp_path / str(n) / "sample"
        runs[n] = (json.loads((folder / "summary.json").read_text()),
                   {p.name: p.read_bytes() for p in sorted((folder / "frames").glob("*.png"))})
    (one, frames1), (two, frames2) = runs[1], runs[2]
    assert one["stages"]["coarse"]["tiles"] == 4 and one["stages"]["coarse"]["skipped_boxes"] == 3
    assert one["stages"]["coarse"]["windows"] == 3 and one["work"]["model_moves"] > one["work"]["steps"]  # regret
    assert len(frames1) == 16 and frames1 == frames2  # the written PNGs, byte for byte
    calls = two["processes"]["calls_per_process"]
    assert two["processes"]["num_processes"] == 2 and sum(calls) == one["unet_calls"] == 108
    assert abs(calls[0] - calls[1]) <= 1
    assert sorted(p.name for p in (tmp_path / "2" / "sample").iterdir()) == sorted(
        p.name for p in (tmp_path / "1" / "sample").iterdir())  # no other process's file, nothing left half-written


@pytest.mark.slow
def test_run_adapts_data_parallel_then_outpaints_sharded_on_the_same_models(tmp_path):
    import json

    tiny = os.path.join(REPO, "configs", "tiny.yaml")
    _launch(["run", tiny, *LAUNCH_OVERRIDES, "adapt.steps=4", f"output.dir={tmp_path}"], tmp_path, 2)
    summary = json.loads((tmp_path / "sample" / "summary.json").read_text())
    assert summary["models_reused"] is True  # the adaptation's models, not loaded again
    assert summary["lora"].endswith("adapter.safetensors")
    calls = summary["processes"]["calls_per_process"]
    assert len(calls) == 2 and sum(calls) == summary["unet_calls"] and abs(calls[0] - calls[1]) <= 1
