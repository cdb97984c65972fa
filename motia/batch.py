"""Batch runs: adapt and outpaint every clip of a manifest, sharded over accelerate processes.

``motia batch BATCH.yaml [key=value ...]`` or ``accelerate launch -m motia.batch BATCH.yaml``.
The manifest (see ``configs/batch_example.yaml``)::

    base: tiny.yaml            # a job config, relative to the manifest
    overrides: [sample.steps=10]
    clips:                     # explicit clips, with per-clip settings
      - {path: a.mp4, name: a_wide, prompt: "a beach", outpaint: {left: 0.5, right: 0.5}}
      - {path: a.mp4, name: a_tall, outpaint: {aspect: "9:16"}, video: {max_frames: 16}}
    globs: ["data/*.mp4"]      # more clips, in sorted order, named by file stem
    output: outputs/batch      # batch root: <output>/<name>/ per clip, reports at the top
    adapter_cache: null        # default $MOTIA_ADAPTERS, else <motia's cache root>/adapters
    reuse_adapters: true

A clip's config is: the base, the manifest's ``overrides``, the command line's overrides,
then the clip's own ``prompt`` / ``video`` (merged key by key) / ``outpaint`` (replaces the
base's canvas: sides it does not name are 0) / ``overrides``; ``video.path``,
``output.dir`` and ``output.name`` are set by the batch. Clip paths and globs are
relative to the manifest; ``output`` and ``adapter_cache`` are used as written (like
``output.dir`` in a job config). Every job's config is validated before anything runs.

Work is split with accelerate's ``PartialState().split_between_processes`` over the
ordered job list. Each rank writes only its own clips' folders and its own
``reports/rank_XXXX.json``; after ``wait_for_everyone`` the main process merges them into
``batch_report.json`` and ``batch_report.csv``. A clip whose ``summary.json`` lists outputs
that all exist is skipped (so a rerun resumes); a clip that fails is recorded with its
error and the others go on; the exit code is 1 when any clip failed. A clip's folder is
locked while its job runs (``motia.runs.lock_run_folder``): a clip whose folder another live
run is writing fails, naming that run.

One ``Accelerator`` serves the whole batch (so every clip must adapt with the same
device type and mixed precision; checked before anything runs). Each rank trains its
clips alone on its device (``motia.adapt.adapt(solo=True)``): the clips are independent,
and letting accelerate's DDP all-reduce gradients between two ranks training different
clips would silently mix them. A solo run uses no barrier, seeds without the rank (a
clip's adapter is the same on any rank) and takes what it put on the accelerator off
again, so the next clip starts as on a fresh one. Only accelerate's public API is used.

Adapter cache: the adapter of a clip is stored under ``<cache>/<key>/adapter.safetensors``
with an ``info.json``; ``key = adapter_key(cfg, clip)`` hashes the *decoded, selected and
resized frames* (the exact pixels adaptation sees, so the frame selection and resize are
covered, and a renamed or copied file keeps its key; a re-encoded one does not), the
adaptation recipe (``adapt`` minus bookkeeping keys), the prompt, the seed, the model
references, the device type and the resolved mixed precision, and the native-scale crops
when the clip's run trains on them (``motia.crops.plan_crops``: a refining canvas). Outpainting
the same clip with another canvas (one that gives the same crops, or none) or other
sampling settings therefore reuses the adapter. An adapter is trained in a temporary
folder inside the cache and renamed to its key when complete, so a failure never
leaves a half entry (and when two ranks race on one key, the first rename wins).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob as globlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, model_validator

from motia.config import JobConfig, OutpaintConfig, VideoConfig, _rel, apply_overrides, load_raw, read_yaml, validate
from motia.errors import ConfigError, MotiaError
from motia.utils import atomic_path

logger = logging.getLogger(__name__)

REPORTS = "reports"
REPORT_JSON = "batch_report.json"
REPORT_CSV = "batch_report.csv"
CLIP_RECORD = "batch_clip.json"  # this batch's row for a finished clip, read back when it is skipped
SUMMARY = "summary.json"  # written by motia.outpaint into the clip's run dir
ADAPTER_FILE = "adapter.safetensors"  # in <cache>/<key>/, as motia.adapt names it
INFO_FILE = "info.json"
KEY_VERSION = 2  # 2: AnimateDiff's noise schedule and the reference's LoRA targets/init
CSV_COLUMNS = ("clip", "status", "adapt_s", "outpaint_s", "peak_memory_bytes", "outputs", "caption", "error",
               "adapter", "adapter_reused", "prompt", "rank", "path")  # fmt: skip

# adapt.* keys that change how a run is logged or checkpointed, not the adapter it ends with.
_ADAPT_BOOKKEEPING = {"output_dir", "checkpoint_every", "keep_checkpoints", "log_every", "encode_chunk",
                      "gradient_checkpointing"}  # fmt: skip
# adapt.* keys that count as what they resolve to, not as written.
_ADAPT_RESOLVED = {"init_lora", "crops", "crop_share"}
_MODEL_KEYS = ("base", "base_config", "vae", "controlnet", "controlnet_config", "motion_adapter",
               "motion_adapter_config", "dtype", "variant", "schedule", "revision")  # fmt: skip
_RESERVED_NAMES = {REPORTS}


# ----------------------------------------------------------------------------- manifest


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClipEntry(_Section):
    """One explicit clip: its file and what differs from the batch's config."""

    path: str
    name: str | None = None  # default: the file stem
    prompt: str | None = None  # "auto" = BLIP caption of the middle frame
    outpaint: OutpaintConfig | None = None  # replaces the base's canvas
    video: VideoConfig | None = None  # merged key by key into the base's (not 'path')
    overrides: list[str] = []


class BatchManifest(_Section):
    """The batch YAML."""

    base: str
    overrides: list[str] = []
    clips: list[ClipEntry] = []
    globs: list[str] = []
    output: str
    adapter_cache: str | None = None
    reuse_adapters: bool = True

    @model_validator(mode="after")
    def _some_clips(self):
        if not self.clips and not self.globs:
            raise ValueError("list at least one clip under 'clips' or a pattern under 'globs'")
        return self


@dataclass(frozen=True)
class BatchJob:
    """One clip of a batch, with its fully resolved and validated config."""

    index: int
    name: str
    path: str
    source: str  # where it came from in the manifest, e.g. "clips.1" or "globs.0"
    cfg: JobConfig


def load_manifest(path: str | os.PathLike) -> BatchManifest:
    """Read and validate a batch YAML; problems raise ConfigError naming the dotted key."""
    path = Path(path)
    data = read_yaml(path)
    return validate(data, str(path), BatchManifest)


def _clip_name(path: str) -> str:
    return "sample" if path.startswith("sample:") else Path(path).stem


def _check_name(name: str, where: str) -> None:
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise ConfigError(f"{where}: clip name {name!r} must be usable as a folder name (no '/', not starting with '.')")
    if name in _RESERVED_NAMES:
        raise ConfigError(f"{where}: clip name {name!r} is reserved for the batch's own files; set another 'name'")


def _job_config(base: dict, entry: ClipEntry | None, path: str, name: str, spec: BatchManifest,
                overrides: Sequence[str], source: str) -> JobConfig:  # fmt: skip
    data = apply_overrides(base, [*spec.overrides, *overrides])
    if entry is not None:
        if entry.video is not None and "path" in entry.video.model_fields_set:
            raise ConfigError(f"{source}: video.path: give the clip's file as 'path' instead")
        if entry.prompt is not None:
            data["prompt"] = entry.prompt
        if entry.video is not None:
            data["video"] = {**data.get("video", {}), **entry.video.model_dump(exclude_unset=True)}
        if entry.outpaint is not None:
            canvas = dict(left=0.0, right=0.0, top=0.0, bottom=0.0, target_size=None, aspect=None)
            data["outpaint"] = {**data.get("outpaint", {}), **canvas, **entry.outpaint.model_dump(exclude_unset=True)}
        data = apply_overrides(data, entry.overrides)
    # New dicts, never writes into ``base``'s: it is shared by every job.
    data["video"] = {**data.get("video", {}), "path": path}
    data["output"] = {**data.get("output", {}), "dir": spec.output, "name": name}
    return validate(data, source)


def expand_jobs(spec: BatchManifest, manifest: str | os.PathLike, overrides: Sequence[str] = ()) -> list[BatchJob]:
    """The ordered job list: explicit clips in manifest order, then each glob's matches sorted.

    A glob match already listed explicitly is not added again. Names must be unique
    (they are the clips' folders). Every job's config is validated here.
    """
    folder = Path(manifest).resolve().parent
    where = str(manifest)
    base_path = folder / spec.base
    if not base_path.is_file():
        raise ConfigError(f"{where}: base: {base_path} does not exist (it is relative to the manifest)")
    base = load_raw(base_path)
    found: list[tuple[str, str, str, ClipEntry | None]] = []  # (path, name, source, entry)
    for i, entry in enumerate(spec.clips):
        path = _rel(entry.path, folder, always=True)
        if ":" not in path.split("/")[0] and not Path(path).exists():  # a missing file is the manifest's error
            raise ConfigError(f"{where}: clips.{i}: {path} does not exist (clip paths are relative to the manifest)")
        found.append((path, entry.name or _clip_name(path), f"clips.{i}", entry))
    listed = {p for p, *_ in found}
    for i, pattern in enumerate(spec.globs):
        matches = sorted(globlib.glob(str(folder / pattern) if not os.path.isabs(pattern) else pattern, recursive=True))
        files = [str(Path(m).resolve()) for m in matches if Path(m).is_file()]
        if not files:
            raise ConfigError(f"{where}: globs.{i}: '{pattern}' matches no file (relative to {folder})")
        for path in files:
            if path not in listed:
                listed.add(path)
                found.append((path, _clip_name(path), f"globs.{i}", None))
    seen: dict[str, str] = {}
    jobs = []
    for index, (path, name, source, entry) in enumerate(found):
        _check_name(name, f"{where}: {source}")
        if name in seen:
            raise ConfigError(
                f"{where}: {source} and {seen[name]} are both named '{name}'; give one of them another 'name'"
            )
        seen[name] = source
        cfg = _job_config(base, entry, path, name, spec, overrides, f"{where}: {source} ({name})")
        jobs.append(BatchJob(index, name, path, source, cfg))
    return jobs


# ----------------------------------------------------------------------------- adapter cache


def adapter_cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else ``$MOTIA_ADAPTERS``, else ``adapters`` under motia's cache root
    (``$MOTIA_CACHE``, else ``$XDG_CACHE_HOME/motia``, else ``~/.cache/motia``)."""
    if cache:
        return Path(cache).expanduser()
    env = os.environ.get("MOTIA_ADAPTERS")
    if env:
        return Path(env).expanduser()
    from motia.models.tiny import default_cache_root

    return default_cache_root() / "adapters"


def adapter_recipe(cfg: JobConfig) -> dict:
    """Everything besides the pixels that decides the trained adapter (hashed into its key)."""
    from motia.adapt import accelerator_settings

    d = cfg.to_dict()
    device_type, mixed_precision = accelerator_settings(cfg)  # "auto" differs per device and launcher
    recipe = {
        "version": KEY_VERSION,
        # init_lora by content below; crops as they resolve for the clip (adapter_key)
        "adapt": {k: v for k, v in d["adapt"].items() if k not in _ADAPT_BOOKKEEPING | _ADAPT_RESOLVED},
        "prompt": cfg.prompt,
        "seed": cfg.seed,
        "models": {k: d["models"][k] for k in _MODEL_KEYS},
        "device_type": device_type,
        "mixed_precision": mixed_precision,
    }
    if cfg.adapt.init_lora:  # the starting weights by content, not by path
        from motia.lora_io import file_sha256

        recipe["init_lora_sha256"] = file_sha256(cfg.adapt.init_lora)
    return recipe


def adapter_key(cfg: JobConfig, clip) -> str:
    """The adapter-cache key of this clip under this config (16 hex digits).

    ``clip`` is the ``motia.video.Clip`` read with the config's ``video`` section; its frames
    (F, 3, H, W) are hashed as decoded, and its shots (``video.shots`` resolved) when it has cuts.
    ``cfg.prompt`` must already be resolved (not "auto").
    """
    if cfg.prompt.strip() == "auto":
        raise ValueError("adapter_key needs the resolved prompt: call motia.caption.resolve_prompt first")
    h = hashlib.sha256(json.dumps(adapter_recipe(cfg), sort_keys=True).encode())
    from motia.video import hash_unit_frames

    h.update(str(tuple(clip.frames.shape)).encode())
    hash_unit_frames(h, clip.frames)
    from motia.planning import plan_shots

    shots = plan_shots(cfg, clip)
    if len(shots) > 1:  # cuts change the training windows; one shot trains as before shots existed (same key)
        h.update(f"shots {shots}".encode())
    from motia.crops import plan_crops

    crops = plan_crops(cfg, clip, shots=shots)
    if crops is not None:  # native-scale crops (a refining canvas); without them it trains as before (same key)
        h.update(f"crops {json.dumps(crops, sort_keys=True)}".encode())
    return h.hexdigest()[:16]


def find_adapter(key: str, cache: str | os.PathLike | None = None) -> Path | None:
    """The cached adapter file for ``key``, or None."""
    path = adapter_cache_dir(cache) / key / ADAPTER_FILE
    return path if path.is_file() else None


def train_adapter(cfg: JobConfig, clip, key: str, cache: str | os.PathLike | None = None, progress: bool = False,
                  models=None, accelerator=None, callback=None) -> Path:  # fmt: skip
    """Adapt (``motia.adapt.adapt_from_config``, this process alone) into a temporary folder in the cache, then
    rename it to ``key``. ``callback`` observes every training step (``motia.adapt.adapt``)."""
    from motia import adapt as adapt_mod
    from motia.crops import CROP_LATENTS_FILE

    root = adapter_cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp.", dir=root))
    try:
        data = cfg.to_dict()
        data["adapt"]["output_dir"] = str(tmp)
        adapt_mod.adapt_from_config(JobConfig.model_validate(data), progress=progress, models=models,
                                    accelerator=accelerator, solo=True, callback=callback)  # fmt: skip
        if not (tmp / adapt_mod.ADAPTER_FILE).is_file():
            raise MotiaError(f"adaptation finished without writing {tmp / adapt_mod.ADAPTER_FILE}")
        for name in (adapt_mod.LATENTS_FILE, CROP_LATENTS_FILE):  # they only serve a resume of this run
            (tmp / name).unlink(missing_ok=True)
        info = {
            "key": key,
            "clip": str(getattr(clip, "source", cfg.video.path)),
            "frames": list(clip.frames.shape),
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            **{k: v for k, v in adapter_recipe(cfg).items() if k != "version"},
        }
        _write_json(tmp / INFO_FILE, info)
        final = root / key
        try:
            os.rename(tmp, final)
        except OSError:
            if find_adapter(key, root) is None:  # not another process's finished entry: a real failure
                raise
            logger.info("adapter %s was cached meanwhile by another process; using that one", key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / ADAPTER_FILE


@dataclass
class CacheEntry:
    key: str
    path: Path
    clip: str
    created: str
    size: int


def list_adapters(cache: str | os.PathLike | None = None) -> list[CacheEntry]:
    """The complete entries of the cache, oldest first."""
    root = adapter_cache_dir(cache)
    if not root.is_dir():
        return []
    entries = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / ADAPTER_FILE).is_file():
            continue
        info = _read_json(d / INFO_FILE) or {}
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        entries.append(CacheEntry(d.name, d, str(info.get("clip", "?")), str(info.get("created", "?")), size))
    return sorted(entries, key=lambda e: (e.created, e.key))


def adapters_command(args: argparse.Namespace) -> int:
    """`motia adapters list|rm|export`: show, delete or export cache entries; 2 (with a message) for an unknown key."""
    root = adapter_cache_dir(getattr(args, "cache", None))
    verb = getattr(args, "adapters_verb", None) or "list"
    entries = list_adapters(root)
    if verb == "export":
        return _export_adapter(args, root, entries)
    if verb == "list":
        if not entries:
            print(f"no adapters in {root}")
            return 0
        rows = [[e.key, e.created, f"{e.size / 2**20:.1f} MB", e.clip] for e in entries]
        print(_table(["key", "created", "size", "clip"], rows))
        print(f"{len(entries)} adapter(s) in {root}")
        return 0
    if verb != "rm":
        print(f"error: unknown action '{verb}'; use list, rm or export", file=sys.stderr)
        return 2
    if args.all:
        for d in root.iterdir() if root.is_dir() else []:
            if d.is_dir() and ((d / ADAPTER_FILE).is_file() or ".tmp." in d.name):  # leftovers of killed runs too
                shutil.rmtree(d)
        print(f"removed {len(entries)} adapter(s) from {root}")
        return 0
    if not args.keys:
        print("error: adapters rm: give key prefixes (see `motia adapters list`) or --all", file=sys.stderr)
        return 2
    chosen: dict[str, CacheEntry] = {}
    for prefix in args.keys:
        matches = [e for e in entries if e.key.startswith(prefix)]
        if not matches:
            print(f"error: adapters rm: no cached adapter key starts with '{prefix}' in {root} "
                  "(see `motia adapters list`)", file=sys.stderr)  # fmt: skip
            return 2
        if len(matches) > 1:
            print(f"error: adapters rm: '{prefix}' matches {len(matches)} adapters "
                  f"({', '.join(e.key for e in matches)}); give more of the key", file=sys.stderr)  # fmt: skip
            return 2
        chosen[matches[0].key] = matches[0]
    for e in chosen.values():
        shutil.rmtree(e.path)
        print(f"removed {e.key} ({e.clip})")
    return 0


def _export_adapter(args: argparse.Namespace, root: Path, entries: list[CacheEntry]) -> int:
    """`motia adapters export ADAPTER`: a path, else a cache key prefix; prints what was written and dropped."""
    from motia.lora_io import export_animatediff

    src, out = Path(args.adapter).expanduser(), args.out
    if not src.exists():
        matches = [e for e in entries if e.key.startswith(args.adapter)]
        if len(matches) != 1:
            why = "no cached adapter key starts with it" if not matches else f"it matches {len(matches)} cached adapters"
            print(f"error: adapters export: {args.adapter} is not a file or folder, and {why} in {root} "
                  "(see `motia adapters list`)", file=sys.stderr)  # fmt: skip
            return 2
        src = matches[0].path / ADAPTER_FILE
        out = out or f"{matches[0].key}.animatediff.safetensors"
    _, lines = export_animatediff(src, out, overwrite=args.overwrite)
    print("\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- one clip


def _partial_state():
    """accelerate's process state; gloo on CPU-only machines (``motia.shard.process_state``)."""
    from motia.shard import process_state

    return process_state()


def batch_accelerator(jobs: Sequence[BatchJob]):
    """The one Accelerator every clip of the batch adapts with (``motia.adapt.make_accelerator``).

    accelerate keeps one device and mixed precision per process, so clips that would
    adapt with different ones (per-clip ``models.device`` / ``adapt.mixed_precision``)
    are refused up front, naming both.
    """
    from motia.adapt import accelerator_settings, make_accelerator

    first: dict[tuple[str, str], BatchJob] = {}
    for job in jobs:
        settings = accelerator_settings(job.cfg)
        first.setdefault(settings, job)
        if len(first) > 1:
            (a, ja), (b, jb) = first.items()
            raise ConfigError(
                f"{ja.source} ({ja.name}) adapts on {a[0]} with mixed precision {a[1]}, {jb.source} ({jb.name}) on "
                f"{b[0]} with {b[1]}; a batch adapts every clip with one setting: run them as separate batches"
            )
    return make_accelerator(jobs[0].cfg)


def completed_outputs(run_dir: str | os.PathLike) -> dict[str, str] | None:
    """The outputs listed by ``<run_dir>/summary.json`` when all of them exist, else None."""
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / SUMMARY)
    if not isinstance(summary, dict) or not summary.get("outputs"):
        return None
    outputs = summary["outputs"]
    items = outputs.items() if isinstance(outputs, dict) else ((Path(str(p)).name, p) for p in outputs)
    found = {}
    for name, p in items:
        p = Path(str(p))
        candidates = [p] if p.is_absolute() else [p, run_dir / p]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            return None
        found[str(name)] = str(hit)
    return found


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, MotiaError) else f"{type(e).__name__}: {text}".rstrip(": ")


def _new_row(job: BatchJob) -> dict[str, Any]:
    return {"index": job.index, "clip": job.name, "path": job.path, "status": "failed", "adapt_s": None,
            "outpaint_s": None, "peak_memory_bytes": None, "outputs": {}, "caption": "", "prompt": job.cfg.prompt,
            "adapter": None, "adapter_reused": None, "error": "", "rank": 0}  # fmt: skip


def run_job(job: BatchJob, cache: str | os.PathLike | None = None, reuse_adapters: bool = True,
            progress: bool = False, models=None, accelerator=None, overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Adapt (or reuse a cached adapter) and outpaint one clip; returns its report row, never raises
    (except KeyboardInterrupt): a failure is the row's ``status: failed`` and ``error``.

    ``models`` (a ``motia.job.ModelCache``) keeps the loaded models from clip to clip;
    after a failure it is emptied, so the next clip starts from freshly loaded ones.
    ``accelerator`` (``batch_accelerator``; made from the clip's config when None) trains
    the clip in this process alone. ``overwrite`` lets the clip replace the outputs of another config in its folder.
    A clip whose folder another live run is writing fails, naming that run (``motia.runs.lock_run_folder``)."""
    from motia.runs import lock_run_folder

    row = _new_row(job)
    try:  # every rank writes its own clips: each locks the clip's folder (the stages inside take it again)
        with lock_run_folder(job.cfg.run_dir(), fix="run one batch at a time into this output"):
            return _run_job_locked(job, row, cache, reuse_adapters, progress, models, accelerator, overwrite)
    except MotiaError as e:  # another run is writing this clip's folder, or it cannot be written
        row["error"] = _one_line(e)
        return row


def _run_job_locked(job: BatchJob, row: dict[str, Any], cache, reuse_adapters: bool, progress: bool, models,
                    accelerator, overwrite: bool) -> dict[str, Any]:  # fmt: skip
    """``run_job`` with the clip's folder locked."""
    from motia import adapt as adapt_mod
    from motia import outpaint as outpaint_mod
    from motia.caption import resolve_prompt
    from motia.planning import load_clip
    from motia.utils import peak_memory_bytes

    cfg = job.cfg
    done = completed_outputs(cfg.run_dir())
    if done is not None:
        before = _read_json(cfg.run_dir() / CLIP_RECORD) or {}
        row.update({k: before[k] for k in ("caption", "prompt", "adapter") if k in before})
        row.update(status="skipped", outputs=done)
        return row
    device = None
    try:
        import torch

        from motia.models import resolve_device

        device = resolve_device(cfg.models.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clip = load_clip(cfg)
        prompt = resolve_prompt(cfg, clip)
        if prompt != cfg.prompt:
            row["caption"] = prompt
            data = cfg.to_dict()
            data["prompt"] = prompt
            cfg = JobConfig.model_validate(data)
        row["prompt"] = prompt
        start = time.perf_counter()
        if reuse_adapters:
            key = adapter_key(cfg, clip)
            adapter = find_adapter(key, cache)
            row.update(adapter=key, adapter_reused=adapter is not None)
            if adapter is None:
                adapter = train_adapter(cfg, clip, key, cache, progress=progress, models=models, accelerator=accelerator)
        else:
            adapter = adapt_mod.adapt_from_config(cfg, overwrite=overwrite, progress=progress, models=models,
                                                  accelerator=accelerator, solo=True)  # fmt: skip
            row.update(adapter=str(adapter), adapter_reused=False)
        row["adapt_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        outpaint_mod.outpaint_from_config(cfg, lora=str(adapter), overwrite=overwrite, progress=progress,
                                          models=models)  # fmt: skip
        row["outpaint_s"] = round(time.perf_counter() - start, 3)
        row["outputs"] = completed_outputs(cfg.run_dir()) or {}
        if not row["outputs"]:
            logger.warning("%s: %s lists no existing outputs; a rerun will redo this clip", job.name, SUMMARY)
        row["status"] = "ok"
        _write_json(cfg.run_dir() / CLIP_RECORD, row)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one bad clip must not stop the batch
        row["error"] = _one_line(e)
        if models is not None:
            models.clear()
        logger.debug("clip %s failed:\n%s", job.name, traceback.format_exc())
    if device is not None:
        row["peak_memory_bytes"] = peak_memory_bytes(device)
    return row


# ----------------------------------------------------------------------------- the batch


def _progress_line(row: dict, total: int, world: int) -> str:
    head = f"[{row['index'] + 1}/{total}]" + (f" rank {row['rank']}" if world > 1 else "")
    if row["status"] == "failed":
        return f"{head} {row['clip']}: FAILED: {row['error']}"
    if row["status"] == "skipped":
        return f"{head} {row['clip']}: skipped (outputs complete)"
    how = f"reused adapter {row['adapter']}" if row["adapter_reused"] else f"adapt {row['adapt_s']:.1f} s"
    return f"{head} {row['clip']}: ok ({how}, outpaint {row['outpaint_s']:.1f} s)"


def merge_reports(output: str | os.PathLike, num_processes: int, jobs: Sequence[BatchJob]) -> list[dict]:
    """The rank reports of this run (ranks ``0 .. num_processes-1``) as rows in job order.

    A job no rank reported (its process died) is a failed row saying so.
    """
    rows: dict[int, dict] = {}
    for rank in range(num_processes):
        report = _read_json(Path(output) / REPORTS / f"rank_{rank:04d}.json") or {}
        for row in report.get("rows", []):
            rows[row["index"]] = row
    for job in jobs:
        if job.index not in rows:
            rows[job.index] = {**_new_row(job), "error": "no report from the process it was assigned to"}
    return [rows[i] for i in sorted(rows)]


def write_batch_report(output: str | os.PathLike, rows: list[dict], manifest: str, num_processes: int) -> Path:
    """``batch_report.json`` (everything) and ``batch_report.csv`` (one line per clip), atomically."""
    output = Path(output)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    data = {"manifest": str(manifest), "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "num_processes": num_processes, "counts": counts, "clips": rows}  # fmt: skip
    _write_json(output / REPORT_JSON, data)
    with atomic_path(output / REPORT_CSV) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for r in rows:
                cells = {**r, "outputs": ";".join(f"{k}={v}" for k, v in r["outputs"].items())}
                writer.writerow(["" if cells.get(c) is None else cells.get(c) for c in CSV_COLUMNS])
    return output / REPORT_JSON


def format_report(rows: list[dict]) -> str:
    """The final table: one line per clip, then the counts."""
    table = []
    for r in rows:
        peak = "" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f}"
        note = r["error"] or (f"caption: {r['caption']}" if r["caption"] else "")
        table.append([r["clip"], r["status"], _secs(r["adapt_s"]), _secs(r["outpaint_s"]), peak, note[:80]])
    counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in ("ok", "skipped", "failed"))
    return _table(["clip", "status", "adapt s", "outpaint s", "peak GB", "note"], table) + f"\n{counts}"


def run_batch(manifest: str | os.PathLike, overrides: Sequence[str] = (), progress: bool = True,
              overwrite: bool = False) -> int:  # fmt: skip
    """`motia batch`: run this process's share of the manifest's clips; 1 if any clip failed, else 0.

    ``overwrite`` (``--overwrite``) lets clips replace the outputs of another config in their folders.

    Under a multi-process launch only the main process merges the reports and returns the
    batch's code; the others return 0 once their clips are done.
    """
    spec = load_manifest(manifest)
    jobs = expand_jobs(spec, manifest, overrides)
    cache = adapter_cache_dir(spec.adapter_cache)
    out = Path(spec.output)
    state = _partial_state()
    accelerator = batch_accelerator(jobs)  # before anything is written: clips must agree on it
    rank, world = state.process_index, state.num_processes
    report_path = out / REPORTS / f"rank_{rank:04d}.json"
    rows: list[dict] = []

    def write_rank_report() -> None:
        _write_json(report_path, {"rank": rank, "num_processes": world, "rows": rows})

    write_rank_report()  # a rank with no clips still reports, replacing an older run's file
    from motia.job import ModelCache

    models = ModelCache()  # loaded once per process, reused by every clip with the same `models`
    with state.split_between_processes(jobs) as mine:
        for job in mine:
            row = run_job(job, cache, spec.reuse_adapters, models=models, accelerator=accelerator, overwrite=overwrite)
            row["rank"] = rank
            rows.append(row)
            write_rank_report()
            if progress:
                print(_progress_line(row, len(jobs), world), flush=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        # The batch's outcome is the main process's exit code: a launcher (torchrun) stops the
        # other processes as soon as one exits non-zero, which would cut the merge short.
        return 0
    merged = merge_reports(out, world, jobs)
    for stale in (out / REPORTS).glob("rank_*.json"):  # reports of an earlier run with more processes
        if int(stale.stem.split("_")[1]) >= world:
            stale.unlink(missing_ok=True)
    path = write_batch_report(out, merged, str(manifest), world)
    if progress:
        print(format_report(merged))
        print(f"report: {path} (and {REPORT_CSV})", flush=True)
    return int(any(r["status"] == "failed" for r in merged))


# ----------------------------------------------------------------------------- helpers


def _secs(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m motia.batch [--debug] BATCH.yaml [key=value ...]`` (for ``accelerate launch -m``):
    the same as ``motia batch``, with the CLI's error handling (one line, exit 2)."""
    import motia.batch  # its run_batch, not that of `python -m`'s __main__ copy: logs stay named motia.batch
    from motia.command import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a == "--debug"]
    args = parse_args([*flags, "batch", *[a for a in argv if a != "--debug"]])
    return run(args, lambda a: motia.batch.run_batch(a.manifest, a.overrides, overwrite=a.overwrite))


if __name__ == "__main__":
    sys.exit(main())
