"""One clip over several processes: each denoising step's model calls split between them, the predictions gathered.

Under ``accelerate launch --num_processes N`` every process runs the whole sampler loop
(same seed, same noise, so the same latents after every step: noise regret and the
known-region blend draw from the run's generator on every process alike), but of each
step's boxes (temporal window x spatial tile, ``motia.tiles``; the all-known boxes the
sampler skips are not among them) it calls only its share. ``Shard`` is the sampler's
``run_boxes`` hook (``motia.sampler.RunBoxes``): it yields every box's prediction, its
own and the gathered ones, in the boxes' order on every process, so the blend and
everything after it are bit for bit what one process computes alone.

Who calls what: the boxes of the whole run are dealt round robin, box g (counted over
all steps) to process g % N, so in every step the busiest process runs at most one call
more than the idlest, and over the run the counts differ by at most one. The boxes go
in rounds of at most N consecutive ones, one per process: each process calls its box,
then one ``all_gather`` of a small header (status, calls so far, shape) and one of the
float32 predictions padded to the round's largest, so boxes of different shapes (a
smaller last window or tile, a guided batch) travel alike and a step's predictions are
blended as they arrive (memory: one round of N predictions).

Failure: a call that raises on one process is reported in the next header, and every
process stops together: the failing one with its own error, the others with one line
naming it. A process that dies outright breaks the collective (gloo) or is stopped by
the launcher (torchrun stops every process when one exits, and names it).

Only public torch.distributed and accelerate API. On CPU the group is gloo, on CUDA nccl.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterator, Sequence

import torch

from motia.errors import MotiaError
from motia.tiles import Box

MAX_DIMS = 8  # predictions are (B, C, f, h, w); room to spare
# Header of one process's part of a round: status, calls so far, boxes dealt before this step,
# boxes in this step, number of dims, dims.
_STATUS, _CALLS, _START, _COUNT, _NDIM, _DIMS = 0, 1, 2, 3, 4, 5
HEADER = _DIMS + MAX_DIMS
IDLE, SENT, FAILED = 0, 1, 2
WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def owners(start: int, count: int, world: int) -> list[int]:
    """The process of each of a step's ``count`` boxes, the first being box ``start`` of the run: round robin."""
    return [(start + i) % world for i in range(count)]


def split_calls(calls_per_move: Sequence[int], world: int) -> list[int]:
    """Each of ``world`` processes' model calls over a run whose moves call these many boxes (as ``Shard`` deals)."""
    counts = [0] * world
    start = 0
    for n in calls_per_move:
        for rank in owners(start, n, world):
            counts[rank] += 1
        start += n
    return counts


def describe_split(stages: Sequence[tuple[str, int, int]], world: int) -> dict:
    """How a run's model calls would split over ``world`` processes, for `motia info`.

    ``stages``: (name, calls per denoising move, moves) of each sampling stage in order (the
    calls being windows x tiles less the all-known boxes; the moves steps plus regret re-runs).
    """
    per_step = {}
    for name, calls, _ in stages:
        low, extra = divmod(calls, world)
        if world == 1:
            per_step[name] = f"{calls} call(s) per step, all in this process"
        elif extra == 0:
            per_step[name] = f"{calls} call(s) per step: {low} per process"
        else:
            per_step[name] = (f"{calls} call(s) per step: {extra} of {world} processes run {low + 1}, the others "
                              f"{low} (which ones run the extra call rotates)")  # fmt: skip
    out = {"num_processes": world, "per_step": per_step,
           "per_process": split_calls([c for _, c, moves in stages for _ in range(moves)], world)}  # fmt: skip
    fewest = min(calls for _, calls, _ in stages)
    if world > fewest:
        out["note"] = (f"{world - fewest} of {world} processes idle at every step: a step has only {fewest} "
                       "call(s) (more windows or spatial tiles give more)")
    return out


def launched_processes() -> int:
    """How many processes the launcher (torchrun / ``accelerate launch``, or MPI) started; 1 without one."""
    for var in WORLD_SIZE_ENV:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def process_state(cpu: bool | None = None):
    """accelerate's process state, with the process group up: gloo on CPU (``cpu``, default: no CUDA here).

    ``PartialState()`` alone would see one process on a CPU-only machine even under
    ``accelerate launch --multi_gpu`` (torchrun); an accelerate state already made in this
    process (the adaptation's ``Accelerator`` in `motia run`) is the one returned.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    if cpu is None:
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def launched(cpu: bool | None = None):
    """The process state when a launcher started several processes (``process_state``), else None.

    Called before the models load: on GPUs it picks this process's device (``state.device``).
    """
    if launched_processes() <= 1:
        return None
    state = process_state(cpu)
    return state if state.num_processes > 1 else None


class Shard:
    """``run_boxes`` over the processes of a torch.distributed group (see the module docstring).

    ``device`` is where the predictions are yielded (the models' device). ``calls`` counts
    this process's model calls; ``calls_per_process`` every process's, as of the last
    round (so complete after sampling, on every process).
    """

    def __init__(self, rank: int, world: int, device, *, group=None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("Shard needs an initialised torch.distributed process group (motia.shard.process_state)")
        self.rank, self.world, self.group = rank, world, group
        self.device = torch.device(device)
        self.calls = 0
        self.calls_per_process = [0] * world
        self.dealt = 0  # boxes dealt so far, all steps: the same count on every process
        backend = str(dist.get_backend(group))
        self.wire = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")

    def __call__(self, run: Sequence[Box], call: Callable[[Box], torch.Tensor]) -> Iterator[torch.Tensor]:
        run = list(run)
        start, self.dealt = self.dealt, self.dealt + len(run)
        return self._rounds(run, call, start)

    def _rounds(self, run: list[Box], call, start: int) -> Iterator[torch.Tensor]:
        """Rounds of at most ``world`` consecutive boxes, one per process; each gathered, then yielded in order."""
        i = 0
        while i < len(run):
            first = (start + i) % self.world  # the process of the round's first box
            size = min(self.world - first, len(run) - i)
            mine = self.rank - first
            pred, error = None, None
            if 0 <= mine < size:
                try:
                    pred = call(run[i + mine])
                    if pred.dim() > MAX_DIMS:
                        raise ValueError(f"a prediction of {pred.dim()} dims; motia.shard carries at most {MAX_DIMS}")
                    self.calls += 1
                except Exception as e:  # reported to the others before anyone gathers
                    pred, error = None, e
            preds = self._gather(pred, error, first, size, start, len(run))
            i += size
            yield from preds

    def _gather(self, pred, error, first: int, size: int, start: int, count: int) -> list[torch.Tensor]:
        """Every process's prediction of this round (processes first .. first + size - 1), on ``self.device``."""
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[_STATUS] = FAILED if error is not None else (SENT if pred is not None else IDLE)
        header[[_CALLS, _START, _COUNT]] = torch.tensor([self.calls, start, count])
        if pred is not None:
            header[_NDIM] = pred.dim()
            header[_DIMS : _DIMS + pred.dim()] = torch.tensor(pred.shape)
        headers = self._all_gather(header).cpu()  # (world, HEADER)
        self.calls_per_process = headers[:, _CALLS].tolist()
        self._check(headers, error)
        shapes = {}
        for rank in range(first, first + size):
            h = headers[rank]
            if int(h[_STATUS]) != SENT:
                box = start + rank - first
                raise MotiaError(f"process {rank} of {self.world} sent no prediction for its box (box {box})")
            shapes[rank] = tuple(int(v) for v in h[_DIMS : _DIMS + int(h[_NDIM])])
        length = max(torch.Size(s).numel() for s in shapes.values())
        flat = torch.zeros(length, dtype=torch.float32, device=self.wire)
        if pred is not None:  # float32 on the wire: the blend works in float32 whatever the model's precision
            flat[: pred.numel()] = pred.detach().reshape(-1).to(device=self.wire, dtype=torch.float32)
        gathered = self._all_gather(flat)  # (world, length)
        out = []
        for rank, shape in shapes.items():
            if rank == self.rank:
                out.append(pred.float())
            else:
                out.append(gathered[rank, : torch.Size(shape).numel()].view(shape).to(self.device))
        return out

    def _check(self, headers: torch.Tensor, error: Exception | None) -> None:
        """Stop every process together when one failed (its own error there, one line naming it elsewhere)."""
        import torch.distributed as dist

        failed = (headers[:, _STATUS] == FAILED).nonzero().flatten().tolist()
        if failed:
            notes: list = [None] * self.world
            note = None if error is None else f"{type(error).__name__}: {error}"
            dist.all_gather_object(notes, note, group=self.group)
            if error is not None:
                raise error
            raise MotiaError(f"process {failed[0]} of {self.world} failed ({notes[failed[0]]}); every process stopped")
        work = headers[:, [_START, _COUNT]]
        if not bool((work == work[0]).all()):
            raise MotiaError(
                f"the processes are out of step (boxes dealt so far and in this step, per process: {work.tolist()}); "
                "every process must run the same command"
            )

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(world, *tensor.shape): every process's ``tensor``, moved over the wire device."""
        import torch.distributed as dist

        tensor = tensor.to(self.wire)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        try:
            dist.all_gather(parts, tensor, group=self.group)
        except RuntimeError as e:  # a process died, or the collective timed out
            who = f"process {1 - self.rank}" if self.world == 2 else "another process (the launcher's report names it)"
            raise MotiaError(f"process {self.rank} of {self.world} stopped: {who} stopped while the predictions "
                             f"were gathered ({_first_words(e)})") from e  # fmt: skip
        return torch.stack(parts)


def _first_words(error: Exception) -> str:
    """The gist of a backend's error: gloo's first line without its source location and advice."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". This is typically")[0]
