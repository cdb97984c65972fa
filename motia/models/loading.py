"""Load the models a job needs (SD1.5 parts, inpainting ControlNet, AnimateDiff motion module) from what users have.

Each weight source may be a diffusers folder, a Hugging Face hub id, a single
``.safetensors``/``.ckpt`` file, or ``tiny:<name>`` (the built-in tiny bundle, see
``motia.models.tiny``), and all of them go through the same code below. Problems
the user can fix (missing path, uncached hub id while offline, a checkpoint of the
wrong kind) raise ``InputError``/``ConfigError`` with one line naming the config key.
Hub ids are fetched at ``models.revision`` (one for all, or per source key).

Pipeline folders: a VAE, ControlNet or motion adapter source may be a whole
diffusers pipeline folder (``model_index.json``); its ``vae/``, ``controlnet/`` or
``motion_adapter/`` is used. An AnimateDiff pipeline (``AnimateDiffPipeline.save_pretrained``)
as ``models.base`` has a ``UNetMotionModel`` in ``unet/``: it is the motion UNet as it
is, unless ``models.motion_adapter`` is set, which then replaces its motion modules.

The UNetMotionModel is assembled without ever holding two copies of the UNet: it
is built on the meta device and takes over the loaded UNet2D's and motion adapter's
tensors (``load_state_dict(assign=True)``), unlike ``UNetMotionModel.from_unet2d``.

Original AnimateDiff motion modules (``mm_sd_v15_v2.ckpt``) are converted to the
diffusers ``MotionAdapter`` layout. Their attention head count is not stored in the
weights; it is taken, in this order, from ``models.motion_adapter_config`` (a dict,
a JSON file, or a folder with ``config.json``), a sidecar ``<checkpoint stem>.json``
beside the checkpoint, or AnimateDiff's 8 (said in one log line, a warning unless the
channels are those of an AnimateDiff release). Every other setting is read off the
weights (channels, layers, mid block, positional-encoding length).

Noise schedule (``models.schedule``): with ``animatediff`` (the default) the scheduler
is a DDIMScheduler on AnimateDiff's linear beta schedule (``ANIMATEDIFF_SCHEDULE``),
whatever the base's own scheduler config says: the motion module was trained on it and
the reference trains and samples with it. SD1.5's ``scaled_linear`` config would put
alphas_cumprod[481] at 0.302 instead of 0.181. ``base`` builds the DDIMScheduler from
the base's scheduler config instead. ``Components.scheduler`` is the one both stages use
(adaptation's ``add_noise``, outpainting's DDIM steps, noise regret and known-region blend).

Precision: with ``dtype: auto`` everything (UNet, ControlNet, text encoder and VAE)
is fp16 on CUDA and fp32 on CPU. SD1.5's VAE decodes fine in fp16 with
sd-vae-ft-mse; a separate ``vae_dtype`` may be added later. Half precision on CPU
is refused. All loaded modules are in eval mode and frozen (``requires_grad=False``);
adaptation adds its trainable LoRA parameters on top.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from motia.errors import ConfigError, InputError
from motia.utils import _library_progress

logger = logging.getLogger(__name__)

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
ALL_PARTS = ("tokenizer", "text_encoder", "vae", "unet", "controlnet", "scheduler")
ANIMATEDIFF_HEADS = 8  # AnimateDiff's motion modules all use 8 heads
ANIMATEDIFF_HUB_ID = "guoyww/animatediff-motion-adapter-v1-5-2"  # models.motion_adapter when not set and not in the base
# Motion-module channels of every AnimateDiff release (SD1.5 v1/v2/v3, AnimateLCM; SDXL beta): all 8 heads.
_ANIMATEDIFF_CHANNELS = {(320, 640, 1280, 1280), (320, 640, 1280)}
FIELDS = (
    "base",
    "schedule",
    "base_config",
    "vae",
    "controlnet",
    "controlnet_config",
    "motion_adapter",
    "motion_adapter_config",
    "dtype",
    "device",
    "variant",
    "revision",
)
SCHEDULES = ("animatediff", "base")
# AnimateDiff's noise schedule (its configs/inference/*.yaml noise_scheduler_kwargs, and the
# reference's configs/base.yaml): linear betas, no sample clipping, steps offset 1.
# set_alpha_to_one is not set there, so both take DDIMScheduler's default True: the last
# DDIM step lands on the predicted clean latents. "leading" spacing: 961, 921, ..., 1 for 25 steps.
ANIMATEDIFF_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Components:
    """The loaded modules of one job; parts not requested stay None. ``sources`` maps config keys to what was used."""

    tokenizer: Any = None
    text_encoder: Any = None
    vae: Any = None
    unet: Any = None  # diffusers.UNetMotionModel; wants encoder_hidden_states repeated per frame (B * F, 77, D)
    controlnet: Any = None
    scheduler: Any = None  # DDIMScheduler on the schedule named by ``schedule``
    schedule: str = "animatediff"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    sources: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Device and precision


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:N`` are checked."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if re.fullmatch(r"cpu(:\d+)?", name):  # "cpu:0" is what accelerate reports under a multi-process CPU launch
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise ConfigError(f"models.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"models.device: '{name}' requested but no CUDA device is available (CPU-only torch?); use auto or cpu")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"models.device: '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere; fp16/bf16 are refused on CPU (too slow, ops missing)."""
    device = torch.device(device)
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        name = (name or "auto").strip().lower()
        if name == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        if name not in _DTYPES:
            raise ConfigError(f"models.dtype: '{name}' is not one of auto, fp32, fp16, bf16")
        dtype = _DTYPES[name]
    if dtype != torch.float32 and device.type != "cuda":
        short = {v: k for k, v in _DTYPES.items()}.get(dtype, str(dtype))
        raise ConfigError(f"models.dtype: {short} needs a CUDA device (models.device is {device}); use fp32 or auto on CPU")
    return dtype


# ---------------------------------------------------------------------------
# Where a weight source lives


@dataclass(frozen=True)
class Source:
    """One resolved weight reference: ``kind`` is "folder", "file" or "hub"; ``location`` a path or hub id.

    ``revision`` (hub ids only) is the branch, tag or commit every download of this source asks for.
    """

    key: str
    ref: str
    kind: str
    location: str
    revision: str | None = None

    @property
    def label(self) -> str:
        """What to record in metadata: tiny refs and hub ids as written (``id@revision``), local paths absolute."""
        if self.kind == "hub":
            return f"{self.ref}@{self.revision}" if self.revision else self.ref
        return self.ref if self.ref.startswith("tiny:") else self.location

    @property
    def hub_kwargs(self) -> dict[str, str]:
        """``revision=`` for ``from_pretrained`` / ``hf_hub_download`` of a hub source with a revision, else nothing."""
        return {"revision": self.revision} if self.kind == "hub" and self.revision else {}


def source_label(ref: str | os.PathLike | None, revision: str | None = None) -> str | None:
    """What ``Components.sources`` records for ``ref`` (``Source.label``), without checking that it exists."""
    if ref is None or str(ref).strip() == "":
        return None
    ref = str(ref).strip()
    path = Path(ref).expanduser()
    if not ref.startswith("tiny:") and path.exists():
        return str(path.resolve())
    return f"{ref}@{revision}" if revision and not ref.startswith("tiny:") else ref


def locate(ref: str | os.PathLike | None, key: str, revision: str | None = None) -> Source:
    """Decide whether ``ref`` is a local folder, a local file, a tiny-bundle entry or a hub id.

    ``revision`` is kept for hub ids only (a local path has no revisions).
    """
    if ref is None or str(ref).strip() == "":
        raise ConfigError(f"{key}: not set; give a diffusers folder, a hub id, or a .safetensors/.ckpt file")
    ref = str(ref).strip()
    if ref.startswith("tiny:"):
        from motia.models.tiny import resolve_tiny

        path = Path(resolve_tiny(ref, key=key))
        return Source(key, ref, "folder" if path.is_dir() else "file", str(path))
    path = Path(ref).expanduser()
    if path.exists():
        return Source(key, ref, "folder" if path.is_dir() else "file", str(path.resolve()))
    looks_like_path = (
        ref.startswith(("/", "./", "../", "~", "\\"))
        or ref.lower().endswith(SINGLE_FILE_SUFFIXES)
        or ref.count("/") > 1
        or re.match(r"^[A-Za-z]:[\\/]", ref) is not None
    )
    if looks_like_path or not _HUB_ID.match(ref):
        raise InputError(f"{key}: {ref} does not exist; give a diffusers folder, a hub id, or a .safetensors/.ckpt file")
    return Source(key, ref, "hub", ref, revision or None)


HUB_PROBE_TIMEOUT = 3.0  # seconds for the one reachability probe of the hub per process
_hub_reachable: dict[str, bool] = {}  # endpoint -> probe result, for this process


def _hub_offline_set() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the user asked for the cache only."""
    from huggingface_hub import constants

    env = {os.environ.get(v, "").strip().upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return bool(constants.HF_HUB_OFFLINE) or bool(env & {"1", "ON", "YES", "TRUE"})


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT`` honoured) answers at all; probed once per process.

    Any HTTP answer counts as reachable; a refused or failed connection, or none within
    ``timeout`` seconds (name lookup included, which socket timeouts do not bound), does
    not. Without this, every hub request on a machine without network waits through
    huggingface_hub's five retries (26 s) before failing.
    """
    import threading
    import urllib.error
    import urllib.request

    endpoint = hub_endpoint()
    if endpoint not in _hub_reachable:
        answer: list[bool] = []

        def probe() -> None:
            try:
                urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
                answer.append(True)
            except urllib.error.HTTPError:  # the server answered, with an error status: it is there
                answer.append(True)
            except Exception:  # noqa: BLE001 - refused, reset, no route, no name, TLS: unreachable
                answer.append(False)

        thread = threading.Thread(target=probe, name="motia-hub-probe", daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _hub_reachable[endpoint] = bool(answer and answer[0])
        if not _hub_reachable[endpoint]:
            logger.info("the Hugging Face hub at %s is unreachable: using the local cache only", endpoint)
    return _hub_reachable[endpoint]


def _hub_offline() -> bool:
    """Only the local Hugging Face cache can be used: HF_HUB_OFFLINE is set, or the hub is unreachable."""
    return _hub_offline_set() or not hub_reachable()


@contextlib.contextmanager
def hub_cache_only(needed: bool = True) -> Iterator[None]:
    """While loading with diffusers/transformers: if the hub is ``needed`` but unreachable, read the cache only.

    Sets huggingface_hub's offline switch for the duration (the libraries consult it on
    every request), so a cached hub id loads at once and an uncached one fails without
    retries; restored afterwards. Nothing changes when HF_HUB_OFFLINE is already set or
    the hub answers.
    """
    if not needed or _hub_offline_set() or hub_reachable():
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _offline_reason() -> str:
    if _hub_offline_set():
        return "HF_HUB_OFFLINE=1 forbids downloading it"
    return f"the hub ({hub_endpoint()}) is unreachable (no network?)"


def _hub_file(src: Source, filename: str, subfolder: str | None = None, required: bool = True) -> str | None:
    """Path of ``filename`` in a hub repo (downloading it unless offline); clear errors for the usual failures."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError as RemoteEntryNotFoundError

    offline = _hub_offline()
    try:
        return hf_hub_download(src.location, filename, subfolder=subfolder, local_files_only=offline, **src.hub_kwargs)
    except LocalEntryNotFoundError:  # before the remote one: it may subclass it
        if offline:
            if not required and _hub_repo_cached(src.location, src.revision):
                return None
            fetch = f"hf download {src.ref}" + (f" --revision {src.revision}" if src.revision else "")
            raise InputError(
                f"{src.key}: '{src.label}' is not a local path and not in the Hugging Face cache, and {_offline_reason()}; "
                f"run `{fetch}` once online, or give a local folder or file"
            ) from None
        raise InputError(
            f"{src.key}: could not download '{src.ref}' from the Hugging Face hub (no connection?); "
            "check the network or give a local folder or file"
        ) from None
    except RevisionNotFoundError:
        raise InputError(
            f"{src.key}: hub repo '{src.ref}' has no revision '{src.revision}'; check models.revision"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"{src.key}: '{src.ref}' is neither a local path nor a model on the Hugging Face hub "
            "(or it is private: log in with `hf auth login`)"
        ) from None
    except RemoteEntryNotFoundError:
        if not required:
            return None
        name = f"{subfolder}/{filename}" if subfolder else filename
        raise InputError(f"{src.key}: hub repo '{src.ref}' has no {name}; it is not the diffusers model expected here") from None


def _hub_repo_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether the hub cache holds ``repo_id`` (at ``revision``: a ref name or a commit, when given)."""
    from huggingface_hub import scan_cache_dir

    try:
        repos = [r for r in scan_cache_dir().repos if r.repo_id == repo_id]
    except Exception:  # noqa: BLE001 - no cache folder at all
        return False
    if revision is None:
        return bool(repos)
    return any(revision in r.refs or any(c.commit_hash == revision for c in r.revisions) for r in repos)


def _read_config(src: Source, filename: str, subfolder: str | None = None) -> dict | None:
    """A JSON config of a folder or hub repo, or None if it does not have one."""
    if src.kind == "folder":
        path = Path(src.location, subfolder or "", filename)
        if not path.is_file():
            return None
    elif src.kind == "hub":
        path = _hub_file(src, filename, subfolder, required=False)
        if path is None:
            return None
    else:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{src.key}: {path} is not valid JSON ({e})") from None


def _folder_summary(path: str) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(path).iterdir() if not p.name.startswith("."))
    if not names:
        return "it is empty"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"found: {shown}"


def _describe_repo(src: Source) -> str:
    """What a folder / hub repo is, in words, for wrong-kind messages."""
    index = _read_config(src, "model_index.json")
    if index is not None:
        return f"a diffusers {index.get('_class_name', 'pipeline')} folder"
    config = _read_config(src, "config.json")
    if config is not None:
        cls = config.get("_class_name") or (config.get("architectures") or ["unknown"])[0]
        return f"a {cls} folder"
    if src.kind == "folder":
        return f"a folder without model_index.json or config.json ({_folder_summary(src.location)})"
    return "a hub repo without model_index.json or config.json"


def _expect_model_repo(src: Source, class_names: tuple[str, ...], what: str) -> None:
    """Check that a folder / hub repo holds one diffusers model of one of ``class_names``."""
    config = _read_config(src, "config.json")
    if config is not None and config.get("_class_name") in class_names:
        return
    found = _describe_repo(src)
    hint = ""
    if src.kind == "folder" and any(Path(src.location).glob("*.safetensors")) and config is None:
        hint = "; for a single checkpoint file give the file's path"
    raise InputError(f"{src.key}: {src.ref} is {found}, expected {what}{hint}")


# ---------------------------------------------------------------------------
# Single checkpoint files


def read_state_dict(path: str | os.PathLike, key: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch checkpoint (``weights_only``), unwrapped from ``state_dict`` and ``module.``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                sd = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy non-zip format
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{key}: cannot read {path} as a checkpoint ({first[:200]})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{key}: {path} does not hold a flat dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def checkpoint_keys(path: str | os.PathLike, key: str = "checkpoint") -> list[str]:
    """The tensor names of a checkpoint file, cheaply for safetensors (header only)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{key}: cannot read {path} as a safetensors file ({str(e).splitlines()[0][:200]})") from None
    return list(read_state_dict(path, key))


def classify_checkpoint(keys) -> tuple[str, str]:
    """(kind, evidence) of a state dict by its key names.

    kind is one of: lora, motion_lora, motion_module, controlnet, sd, vae,
    text_encoder, unet, unknown.
    """
    keys = list(keys)

    def first(pred):
        return next((k for k in keys if pred(k)), None)

    lora = first(lambda k: "lora" in k.lower())
    motion = first(lambda k: "motion_modules." in k)
    if lora and motion:
        return "motion_lora", f"found LoRA keys on motion modules, e.g. {lora}"
    if lora:
        return "lora", f"found LoRA keys, e.g. {lora}"
    if motion:
        return "motion_module", f"found {motion.split('motion_modules.')[0]}motion_modules.* keys"
    hit = first(lambda k: k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.", "zero_convs.")))
    if hit:
        return "controlnet", f"found {hit.split('.')[0]}.* keys"
    if first(lambda k: k.startswith("model.diffusion_model.")):
        return "sd", "found model.diffusion_model.* keys"
    vae_prefixes = ("first_stage_model.", "encoder.down.", "decoder.up.", "encoder.down_blocks.", "quant_conv.")
    hit = first(lambda k: k.startswith(vae_prefixes))
    if hit:
        return "vae", f"found {hit.split('.')[0]}.* keys"
    hit = first(lambda k: k.startswith(("cond_stage_model.", "text_model.", "conditioner.")))
    if hit:
        return "text_encoder", f"found {hit.split('.')[0]}.* keys"
    hit = first(lambda k: k.startswith(("down_blocks.", "input_blocks.", "time_embedding.", "time_embed.")))
    if hit:
        return "unet", f"found {hit.split('.')[0]}.* keys"
    return "unknown", f"found keys such as {', '.join(keys[:3]) or '(none)'}"


_KIND_LABELS = {
    "lora": "a LoRA",
    "motion_lora": "an AnimateDiff motion LoRA",
    "motion_module": "an AnimateDiff motion module",
    "controlnet": "a ControlNet checkpoint",
    "sd": "a Stable Diffusion checkpoint",
    "vae": "a VAE checkpoint",
    "text_encoder": "a text encoder checkpoint",
    "unet": "a bare UNet checkpoint",
    "unknown": "not a known model checkpoint",
}


def _expect_kind(path: str, key: str, expected: tuple[str, ...], what: str, keys=None) -> None:
    kind, evidence = classify_checkpoint(keys if keys is not None else checkpoint_keys(path, key))
    if kind not in expected:
        raise InputError(f"{key}: {path} looks like {_KIND_LABELS[kind]} ({evidence}), expected {what}")


# ---------------------------------------------------------------------------
# AnimateDiff motion modules


def convert_original_motion_module(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original AnimateDiff keys -> diffusers MotionAdapter keys (diffusers keys pass through unchanged).

    As diffusers' scripts/convert_animatediff_motion_module_to_diffusers.py, except
    that the positional encoding is kept: the original holds one ``pos_encoder.pe``
    per attention block (both identical sinusoids); it becomes the block's shared
    ``pos_embed.pe``, exactly what the original model uses.
    """
    out = {}
    for key, value in state_dict.items():
        m = re.search(r"\.attention_blocks\.(\d+)\.pos_encoder\.pe$", key)
        if m is not None:
            if m.group(1) == "0":
                out[key[: m.start()].replace(".temporal_transformer", "") + ".pos_embed.pe"] = value
            continue
        key = key.replace(".temporal_transformer", "")
        key = re.sub(r"\.norms\.(\d+)\.", lambda g: f".norm{int(g.group(1)) + 1}.", key)
        key = key.replace(".ff_norm.", ".norm3.")
        key = re.sub(r"\.attention_blocks\.(\d+)\.", lambda g: f".attn{int(g.group(1)) + 1}.", key)
        out[key] = value
    return out


def infer_motion_adapter_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """MotionAdapter config read off diffusers-layout motion weights (all but the head count)."""
    down: dict[int, set[int]] = {}
    channels: dict[int, int] = {}
    transformer_layers: set[int] = set()
    mid_modules: set[int] = set()
    mid_layers: set[int] = set()
    seq_len = None
    for key, value in state_dict.items():
        m = re.match(r"down_blocks\.(\d+)\.motion_modules\.(\d+)\.(.+)", key)
        if m:
            block, module, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            down.setdefault(block, set()).add(module)
            if rest == "proj_in.weight":
                channels[block] = value.shape[0]
            t = re.match(r"transformer_blocks\.(\d+)\.", rest)
            if t and block == 0 and module == 0:
                transformer_layers.add(int(t.group(1)))
        m = re.match(r"mid_block\.motion_modules\.(\d+)\.(.+)", key)
        if m:
            mid_modules.add(int(m.group(1)))
            t = re.match(r"transformer_blocks\.(\d+)\.", m.group(2))
            if t:
                mid_layers.add(int(t.group(1)))
        if key.endswith("pos_embed.pe") and seq_len is None:
            seq_len = value.shape[1]
    if not down or sorted(down) != list(range(len(down))) or sorted(channels) != sorted(down):
        raise ValueError("no complete set of down_blocks.N.motion_modules.M.proj_in weights")
    layers = [len(down[b]) for b in sorted(down)]
    config: dict[str, Any] = dict(
        block_out_channels=tuple(channels[b] for b in sorted(channels)),
        motion_layers_per_block=layers[0] if len(set(layers)) == 1 else tuple(layers),
        motion_transformer_layers_per_block=max(len(transformer_layers), 1),
        use_motion_mid_block=bool(mid_modules),
        motion_mid_block_layers_per_block=max(len(mid_modules), 1),
        motion_transformer_layers_per_mid_block=max(len(mid_layers), 1),
        motion_norm_num_groups=32,
        motion_num_attention_heads=ANIMATEDIFF_HEADS,
    )
    if seq_len is not None:
        config["motion_max_seq_length"] = int(seq_len)
    return config


def _motion_config_override(config, path: Path, key: str) -> dict[str, Any]:
    """Explicit ``motion_adapter_config`` (dict / JSON file / folder with config.json), else a ``<stem>.json`` sidecar."""
    where = f"{key}_config"
    if config is None:
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            return {}
        config, where = str(sidecar), str(sidecar)
    if isinstance(config, dict):
        return dict(config)
    cfg_path = Path(str(config)).expanduser()
    if cfg_path.is_dir():
        cfg_path = cfg_path / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(
            f"{where}: {config} does not exist; give a JSON file (or a folder with config.json) of MotionAdapter settings"
        )
    try:
        data = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ConfigError(f"{where}: {cfg_path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {cfg_path} must hold a JSON object of MotionAdapter settings")
    return data


def _check_heads(cfg: dict[str, Any], given: bool, path: Path, key: str) -> None:
    """The head count must divide every motion channel count; an assumed one is said in one log line.

    The weights do not record it (q, k and v are channels x channels whatever the
    count), so a checkpoint trained with other than 8 heads would load silently and
    compute wrong outputs. Detectable: 8 not dividing the channels. Known: every
    AnimateDiff release with SD1.5/SDXL channels uses 8.
    """
    heads, channels = cfg["motion_num_attention_heads"], tuple(cfg["block_out_channels"])
    bad = [c for c in channels if c % heads]
    fix = f"set motion_num_attention_heads in {key}_config (a JSON file) or in {path.with_suffix('.json').name} beside it"
    if bad and given:
        raise ConfigError(f"{key}_config: motion_num_attention_heads={heads} does not divide the motion channels {bad}; {fix}")
    if bad:
        raise ConfigError(
            f"{key}: {path.name} does not record its attention head count, and AnimateDiff's {heads} does not divide "
            f"its channels {bad}; {fix}"
        )
    if given:
        return
    if channels in _ANIMATEDIFF_CHANNELS:
        logger.info("%s: %s: %d attention heads assumed (every AnimateDiff release with channels %s)",
                    key, path.name, heads, channels)  # fmt: skip
    else:
        logger.warning(
            "%s: %s does not record its attention head count: assumed %d (AnimateDiff's); if it was trained with "
            "another, %s", key, path.name, heads, fix,
        )


def load_motion_adapter(
    path: str | os.PathLike,
    unet_config=None,
    config=None,
    key: str = "models.motion_adapter",
):
    """A diffusers ``MotionAdapter`` from an original AnimateDiff motion module file (.ckpt or .safetensors).

    ``unet_config`` (the base UNet's config) is used to check that the module fits.
    ``config`` overrides the settings read from the weights (see the module docstring).
    """
    from accelerate import init_empty_weights
    from diffusers import MotionAdapter

    path = Path(path)
    raw = read_state_dict(path, key)
    _expect_kind(str(path), key, ("motion_module",), "an AnimateDiff motion module (e.g. mm_sd_v15_v2.ckpt)", keys=raw.keys())
    sd = convert_original_motion_module(raw)
    try:
        cfg = infer_motion_adapter_config(sd)
    except ValueError as e:
        raise InputError(f"{key}: {path} is an incomplete motion module ({e})") from None
    override = _motion_config_override(config, path, key)
    known = set(inspect.signature(MotionAdapter.__init__).parameters) - {"self"}
    unknown = sorted(k for k in override if k not in known and not k.startswith("_"))
    if unknown:
        raise ConfigError(f"{key}_config: unknown MotionAdapter settings {unknown}; known: {sorted(known)}")
    cfg.update({k: v for k, v in override.items() if not k.startswith("_")})
    _check_heads(cfg, "motion_num_attention_heads" in override, path, key)
    if unet_config is not None:
        base = tuple(unet_config["block_out_channels"])
        if tuple(cfg["block_out_channels"]) != base:
            raise InputError(
                f"{key}: {path} has motion modules for block channels {tuple(cfg['block_out_channels'])}, "
                f"but the base UNet has {base} (a motion module for another base model?)"
            )
    pe_key = next((k for k in sd if k.endswith("pos_embed.pe")), None)
    if pe_key is not None and sd[pe_key].shape[1] != cfg.get("motion_max_seq_length", sd[pe_key].shape[1]):
        # An explicit longer/shorter positional table: let diffusers regenerate the sinusoids.
        logger.warning("%s: motion_max_seq_length overridden; regenerating positional encodings", key)
        sd = {k: v for k, v in sd.items() if not k.endswith("pos_embed.pe")}

    with init_empty_weights():
        adapter = MotionAdapter.from_config(cfg)
    expected = set(adapter.state_dict())
    missing = sorted(k for k in expected - set(sd) if not k.endswith("pos_embed.pe"))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise InputError(f"{key}: {path} does not match the inferred MotionAdapter layout: {'; '.join(parts)} weights")
    dtype = next(iter(sd.values())).dtype
    adapter.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
    _check_materialized(adapter, key, path)
    return adapter.eval()


def _cast(module: torch.nn.Module, dtype: torch.dtype | None = None, device: torch.device | None = None):
    """``module.to`` that passes the dtype only when a cast is needed (diffusers warns on every dtype ``to``)."""
    if dtype is not None and any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module = module.to(dtype=dtype)
    if device is not None:
        module = module.to(device=device)
    return module


def _check_materialized(model: torch.nn.Module, key: str, ref) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise InputError(f"{key}: {ref} left {len(left)} weights unset (e.g. {left[0]}); the checkpoint is incomplete")


def assemble_motion_unet(unet2d, adapter, key: str = "models.motion_adapter"):
    """UNetMotionModel from a UNet2DConditionModel and a MotionAdapter, sharing their tensors (no second copy).

    The result owns the very tensors of ``unet2d`` and ``adapter`` (drop those
    objects afterwards); the output equals ``UNetMotionModel.from_unet2d``'s.
    ``unet2d`` may also be a UNetMotionModel: its spatial layers are kept, its
    motion modules replaced by the adapter's (diffusers' ``from_unet2d`` reads the
    block types of both the same way).
    """
    from accelerate import init_empty_weights
    from diffusers import UNetMotionModel

    if adapter.config.get("conv_in_channels"):
        raise InputError(f"{key}: PIA-style motion adapters (conv_in_channels set) are not supported")
    try:
        with init_empty_weights():
            model = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    except ValueError as e:
        raise InputError(f"{key}: the motion module does not fit the base UNet ({e})") from None
    # A UNetMotionModel base (an AnimateDiff pipeline's unet/) brings motion modules: the adapter's replace them.
    state = {k: v for k, v in unet2d.state_dict().items() if ".motion_modules." not in k}
    state.update(_cast(adapter, unet2d.dtype).state_dict())
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise InputError(f"{key}: cannot combine the base UNet and the motion module ({what})")
    model.load_state_dict(state, strict=True, assign=True)
    _check_materialized(model, key, "the motion UNet")
    return model.eval()


# ---------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _loading(src: Source, what: str) -> Iterator[None]:
    """Turn library load failures into one-line InputErrors naming the config key."""
    try:
        yield
    except (InputError, ConfigError):
        raise
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise InputError(f"{src.key}: could not load {what} from {src.ref} ({type(e).__name__}: {first[:300]})") from e


def _field(models, fields: dict, name: str):
    if name in fields:
        return fields[name]
    if isinstance(models, dict):
        return models.get(name)
    return getattr(models, name, None)


def _check_tokenizer(tokenizer, src: Source) -> None:
    # transformers 5 can hand back a 2-token tokenizer for an unreachable hub id instead of failing.
    word = "photo"
    ok = len(tokenizer) > 2 and tokenizer.bos_token is not None and tokenizer.eos_token is not None
    if ok:
        ids = tokenizer(word).input_ids
        ok = tokenizer.decode(ids, skip_special_tokens=True).strip() == word
    if not ok:
        raise InputError(
            f"{src.key}: the tokenizer from {src.ref} is broken ({len(tokenizer)} tokens, bos={tokenizer.bos_token!r}); "
            "its tokenizer/ files are missing or could not be downloaded"
        )


# Each source is checked (cheaply: configs, safetensors headers) before anything
# heavy is loaded, so a wrong path fails in a second, not after the UNet is read.


def _check_base(src: Source, cfg: Source | None) -> None:
    if src.kind == "file":
        _expect_kind(src.location, src.key, ("sd",), "a Stable Diffusion 1.5 checkpoint (model.diffusion_model.* keys)")
        src = cfg
    if _read_config(src, "model_index.json") is None:
        raise InputError(
            f"{src.key}: {src.ref} is {_describe_repo(src)}, expected a diffusers SD1.5 pipeline folder "
            "(with model_index.json)" + (" or a .safetensors/.ckpt file" if src.key == "models.base" else "")
        )


def _model_subfolder(src: Source, part: str, class_names: tuple[str, ...], what: str) -> str | None:
    """Where the model is in a folder / hub repo: None when it holds the model itself, ``part`` when it is a
    diffusers pipeline with that part (e.g. ``controlnet/`` of an AnimateDiffControlNetPipeline); else InputError."""
    config = _read_config(src, "config.json")
    if config is not None and config.get("_class_name") in class_names:
        return None
    if config is None and _read_config(src, "model_index.json") is not None:
        sub = _read_config(src, "config.json", subfolder=part)
        if sub is not None and sub.get("_class_name") in class_names:
            return part
    _expect_model_repo(src, class_names, f"{what}, or a diffusers pipeline folder with {part}/")
    return None  # not reached: _expect_model_repo raised


def _check_vae(src: Source) -> str | None:
    """The subfolder holding the VAE ("vae" when a whole pipeline is given), or None."""
    if src.kind == "file":
        _expect_kind(src.location, src.key, ("vae", "sd"), "a VAE checkpoint")
        return None
    return _model_subfolder(src, "vae", ("AutoencoderKL",), "an AutoencoderKL (VAE) folder or hub id")


def _check_controlnet(src: Source, cfg: Source | None) -> str | None:
    """The subfolder holding the ControlNet ("controlnet" when a whole pipeline is given), or None."""
    if src.kind == "file":
        _expect_kind(src.location, src.key, ("controlnet",), "an SD1.5 ControlNet (e.g. control_v11p_sd15_inpaint)")
        if cfg is not None:
            _expect_model_repo(cfg, ("ControlNetModel",), "a diffusers ControlNetModel folder or hub id")
        return None
    return _model_subfolder(src, "controlnet", ("ControlNetModel",), "a diffusers ControlNetModel folder or hub id")


def _check_adapter(src: Source) -> str | None:
    """The subfolder holding the MotionAdapter ("motion_adapter" of an AnimateDiff pipeline), or None."""
    if src.kind == "file":
        _expect_kind(src.location, src.key, ("motion_module",), "an AnimateDiff motion module (e.g. mm_sd_v15_v2.ckpt)")
        return None
    return _model_subfolder(
        src, "motion_adapter", ("MotionAdapter",),
        "a diffusers MotionAdapter folder or hub id, or an AnimateDiff motion module file",
    )


def _unet_class(src: Source) -> str | None:
    """``_class_name`` of a pipeline folder's / hub repo's ``unet/`` (UNetMotionModel in AnimateDiff pipelines)."""
    if src.kind == "file":
        return None
    return (_read_config(src, "config.json", subfolder="unet") or {}).get("_class_name")


def _base_from_repo(src: Source, need: set[str], dtype, variant):
    """The base's parts from a pipeline folder / hub repo. Its ``unet`` is a UNet2DConditionModel, or the
    UNetMotionModel of an AnimateDiff pipeline (motion modules included)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    loc, out, hub = src.location, {}, src.hub_kwargs
    if "tokenizer" in need:
        with _loading(src, "the tokenizer"):
            out["tokenizer"] = CLIPTokenizer.from_pretrained(loc, subfolder="tokenizer", **hub)
    if "text_encoder" in need:
        with _loading(src, "the text encoder"):
            out["text_encoder"] = CLIPTextModel.from_pretrained(
                loc, subfolder="text_encoder", dtype=dtype, variant=variant, **hub
            )
    if "vae" in need:
        with _loading(src, "the VAE"):
            out["vae"] = AutoencoderKL.from_pretrained(loc, subfolder="vae", torch_dtype=dtype, variant=variant, **hub)
    if "unet" in need:
        cls = UNetMotionModel if _unet_class(src) == "UNetMotionModel" else UNet2DConditionModel
        with _loading(src, "the UNet"):
            out["unet"] = cls.from_pretrained(loc, subfolder="unet", torch_dtype=dtype, variant=variant, **hub)
    if "scheduler" in need:
        with _loading(src, "the scheduler config"):
            out["scheduler"] = DDIMScheduler.from_pretrained(loc, subfolder="scheduler", **hub)
    return out


def _base_from_single_file(src: Source, cfg: Source, need: set[str], dtype):
    """Parts of a single-file SD checkpoint (read once), architectures from the ``cfg`` pipeline folder / hub id."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out = {}
    if "scheduler" in need:
        with _loading(cfg, "the scheduler config"):
            out["scheduler"] = DDIMScheduler.from_pretrained(cfg.location, subfolder="scheduler", **cfg.hub_kwargs)
    modules = {"tokenizer", "text_encoder", "vae", "unet"} & need
    if modules:
        skip = {name: None for name in ("tokenizer", "text_encoder", "vae", "unet") if name not in need}
        with _loading(src, "the single-file checkpoint"):
            pipe = StableDiffusionPipeline.from_single_file(
                src.location,
                config=cfg.location,
                torch_dtype=dtype,
                safety_checker=None,
                feature_extractor=None,
                scheduler=out.get("scheduler") or animatediff_scheduler(),  # a placeholder: only modules are kept
                **skip,
                **cfg.hub_kwargs,  # the checkpoint is a local file: the revision only picks the config files
            )
        out.update({name: getattr(pipe, name) for name in modules})
        del pipe
    return out


def animatediff_scheduler():
    """A fresh DDIMScheduler on AnimateDiff's linear schedule (``ANIMATEDIFF_SCHEDULE``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**ANIMATEDIFF_SCHEDULE)


def describe_schedule(scheduler, schedule: str, steps: int | None = None) -> dict[str, Any]:
    """What ``motia info`` prints about a scheduler: its name, betas, a probe alpha and the timesteps."""
    c = scheduler.config
    out: dict[str, Any] = {
        "name": schedule,
        "betas": f"{c.beta_schedule} {c.beta_start:g}..{c.beta_end:g} over {c.num_train_timesteps}",
        "alphas_cumprod[481]": round(float(scheduler.alphas_cumprod[481]), 4),
        "clip_sample": bool(c.clip_sample),
        "set_alpha_to_one": bool(c.set_alpha_to_one),
        "steps_offset": int(c.steps_offset),
        "spacing": c.timestep_spacing,
    }
    if steps:
        probe = type(scheduler).from_config(c)  # set_timesteps mutates: never on the shared one
        probe.set_timesteps(steps)
        ts = probe.timesteps.tolist()
        out["timesteps"] = ts if len(ts) <= 4 else f"{ts[0]}, {ts[1]}, ..., {ts[-1]} ({len(ts)} steps)"
    return out


def _load_vae(src: Source, subfolder: str | None, arch: Source, dtype):
    from diffusers import AutoencoderKL

    with _loading(src, "the VAE"):
        if src.kind == "file":
            # A lone VAE file has the base model's VAE architecture.
            return AutoencoderKL.from_single_file(
                src.location, config=arch.location, subfolder="vae", torch_dtype=dtype,
                **({"config_revision": arch.revision} if arch.hub_kwargs else {}),
            )
        return AutoencoderKL.from_pretrained(src.location, subfolder=subfolder, torch_dtype=dtype, **src.hub_kwargs)


def _load_controlnet(src: Source, subfolder: str | None, cfg: Source | None, dtype):
    from diffusers import ControlNetModel

    if src.kind != "file":
        with _loading(src, "the ControlNet"):
            return ControlNetModel.from_pretrained(src.location, subfolder=subfolder, torch_dtype=dtype, **src.hub_kwargs)
    try:
        with _loading(src, "the ControlNet"):
            return ControlNetModel.from_single_file(
                src.location, config=cfg.location if cfg else None, torch_dtype=dtype,
                **({"config_revision": cfg.revision} if cfg is not None and cfg.hub_kwargs else {}),
            )
    except InputError as e:
        # Without controlnet_config diffusers fetches a stock SD1.5 ControlNet config from the hub.
        if cfg is None and _hub_offline():
            raise InputError(
                f"{src.key}: the architecture config for {src.ref} is not in the Hugging Face cache and {_offline_reason()}; "
                "set models.controlnet_config to a diffusers ControlNet folder"
            ) from e
        raise


def _load_adapter(src: Source, subfolder: str | None, config, unet_config, dtype):
    from diffusers import MotionAdapter

    if src.kind == "file":
        return _cast(load_motion_adapter(src.location, unet_config=unet_config, config=config, key=src.key), dtype)
    with _loading(src, "the motion adapter"):
        return MotionAdapter.from_pretrained(src.location, subfolder=subfolder, torch_dtype=dtype, **src.hub_kwargs)


def load_components(
    models=None,
    parts=ALL_PARTS,
    device=None,
    dtype=None,
    progress: bool = False,
    **fields,
) -> Components:
    """Load the requested ``parts`` of a job from a ``models`` config section (or keyword fields).

    ``models`` is any object (or dict) with the attributes in ``FIELDS``; keyword
    ``fields`` override them. ``device``/``dtype`` override ``models.device``/``models.dtype``.
    The UNet is a ``UNetMotionModel`` (SD1.5 UNet + motion modules), the scheduler a
    ``DDIMScheduler`` on the ``schedule`` field's noise schedule: ``animatediff`` (default;
    the base is not read for it) or ``base`` (the base's scheduler config). ``progress=True``
    shows a bar over the parts and the libraries' own loading bars.
    """
    from tqdm.auto import tqdm

    bad = sorted(set(fields) - set(FIELDS))
    if bad:
        raise TypeError(f"load_components() got unknown model fields {bad}")
    need = set(parts)
    if need - set(ALL_PARTS):
        raise ValueError(f"unknown parts {sorted(need - set(ALL_PARTS))}; choose from {ALL_PARTS}")
    get = lambda name: _field(models, fields, name)  # noqa: E731
    dev = resolve_device(device if device is not None else get("device"))
    dt = resolve_dtype(dtype if dtype is not None else get("dtype"), dev)
    schedule = get("schedule") or "animatediff"
    if schedule not in SCHEDULES:
        raise ConfigError(f"models.schedule: '{schedule}' is not one of {', '.join(SCHEDULES)}")
    comps = Components(device=dev, dtype=dt, schedule=schedule)

    # Resolve and check every source first.
    revision = get("revision")
    rev = lambda name: revision.get(name) if isinstance(revision, dict) else revision  # noqa: E731
    vae_src = locate(get("vae"), "models.vae", rev("vae")) if "vae" in need and get("vae") else None
    base_need = (
        need & {"tokenizer", "text_encoder", "unet"}
        | ({"scheduler"} if "scheduler" in need and schedule == "base" else set())
        | ({"vae"} if "vae" in need and not vae_src else set())
    )
    base = base_cfg = None
    if base_need or vae_src is not None:
        base = locate(get("base"), "models.base", rev("base"))
        if base.kind == "file":
            base_cfg = locate(get("base_config") or SD15_HUB_ID, "models.base_config", rev("base_config"))
        try:
            _check_base(base, base_cfg)
        except InputError as e:
            if base_cfg is None or get("base_config") or not str(e).startswith("models.base_config"):
                raise
            raise InputError(
                f"models.base_config: not set, and the default architecture source '{SD15_HUB_ID}' for the single-file "
                f"base is not available (not cached, and {_offline_reason()}); "
                "set it to a local SD1.5 diffusers folder (only its config files are read)"
            ) from None
    vae_subfolder = _check_vae(vae_src) if vae_src is not None else None
    cn_src = cn_cfg = cn_subfolder = None
    if "controlnet" in need:
        cn_src = locate(get("controlnet"), "models.controlnet", rev("controlnet"))
        if cn_src.kind == "file" and get("controlnet_config"):
            cn_cfg = locate(get("controlnet_config"), "models.controlnet_config", rev("controlnet_config"))
        cn_subfolder = _check_controlnet(cn_src, cn_cfg)
    # The motion module: models.motion_adapter when set; else an AnimateDiff pipeline base's own (its unet/ is a
    # UNetMotionModel, used as it is: mm_src stays None); else AnimateDiff v2 from the hub.
    mm_src = mm_subfolder = None
    if "unet" in need:
        if get("motion_adapter"):
            mm_src = locate(get("motion_adapter"), "models.motion_adapter", rev("motion_adapter"))
        elif _unet_class(base) != "UNetMotionModel":
            mm_src = locate(ANIMATEDIFF_HUB_ID, "models.motion_adapter", rev("motion_adapter"))
        if mm_src is not None:
            mm_subfolder = _check_adapter(mm_src)
    for name, src in (("base", base), ("base_config", base_cfg), ("vae", vae_src), ("controlnet", cn_src),
                      ("controlnet_config", cn_cfg), ("motion_adapter", mm_src)):  # fmt: skip
        if src is not None:
            comps.sources[name] = src.label
    if "unet" in need and mm_src is None:
        comps.sources["motion_adapter"] = f"{base.label}/unet"
    _check_revision(revision, [base, base_cfg, vae_src, cn_src, cn_cfg, mm_src])

    steps = [n for n, on in (("base", base_need), ("vae", vae_src), ("controlnet", cn_src), ("motion adapter", mm_src)) if on]
    # A single-file ControlNet without controlnet_config makes diffusers fetch a stock config from the hub.
    needs_hub = any(s is not None and s.kind == "hub" for s in (base, base_cfg, vae_src, cn_src, cn_cfg, mm_src)) or (
        cn_src is not None and cn_src.kind == "file" and cn_cfg is None
    )
    loaded: dict[str, Any] = {}
    with (
        _library_progress(progress),
        hub_cache_only(needs_hub),
        tqdm(total=len(steps), desc="loading models", disable=not progress) as bar,
    ):
        if base_need:
            bar.set_postfix_str("base")
            if base.kind == "file":
                loaded = _base_from_single_file(base, base_cfg, base_need, dt)
            else:
                loaded = _base_from_repo(base, base_need, dt, get("variant"))
            bar.update()
        if vae_src is not None:
            bar.set_postfix_str("vae")
            loaded["vae"] = _load_vae(vae_src, vae_subfolder, base_cfg or base, dt)
            bar.update()
        if cn_src is not None:
            bar.set_postfix_str("controlnet")
            loaded["controlnet"] = _load_controlnet(cn_src, cn_subfolder, cn_cfg, dt)
            bar.update()
        if mm_src is not None:
            bar.set_postfix_str("motion adapter")
            base_unet = loaded.pop("unet")  # a UNet2D, or an AnimateDiff pipeline's UNetMotionModel
            adapter = _load_adapter(mm_src, mm_subfolder, get("motion_adapter_config"), base_unet.config, dt)
            loaded["unet"] = assemble_motion_unet(base_unet, adapter, key=mm_src.key)
            del base_unet, adapter
            bar.update()

    if "scheduler" in need and schedule == "animatediff":
        loaded["scheduler"] = animatediff_scheduler()
    if "tokenizer" in loaded:
        _check_tokenizer(loaded["tokenizer"], base)
    _check_compatible(loaded, comps.sources)
    for name in ("text_encoder", "vae", "unet", "controlnet"):
        if name in loaded:
            loaded[name] = _cast(loaded[name], dt, dev).eval().requires_grad_(False)
    for name in ALL_PARTS:
        if name in need:
            setattr(comps, name, loaded[name])
    return comps


def _check_revision(revision, sources: list[Source | None]) -> None:
    """A per-source revision must name a hub id; a single one that reaches no hub id is worth one warning."""
    located = [s for s in sources if s is not None]
    if isinstance(revision, dict):
        for src in located:
            name = src.key.removeprefix("models.")
            if name in revision and src.kind != "hub":
                raise ConfigError(
                    f"models.revision.{name}: {src.ref} is a local {src.kind}, not a hub id, and has no revisions; "
                    f"remove this entry or point {src.key} at a hub id"
                )
    elif revision and located and not any(s.kind == "hub" for s in located):
        logger.warning("models.revision=%s is ignored: no model source here is a hub id", revision)


def _check_compatible(loaded: dict[str, Any], sources: dict[str, str]) -> None:
    """Catch mixed model families (e.g. an SDXL ControlNet with an SD1.5 base) before they fail mid-run."""
    unet = loaded.get("unet")
    cn = loaded.get("controlnet")
    te = loaded.get("text_encoder")
    if unet is not None and cn is not None:
        if tuple(cn.config.block_out_channels) != tuple(unet.config.block_out_channels) or (
            cn.config.cross_attention_dim != unet.config.cross_attention_dim
        ):
            raise InputError(
                f"models.controlnet: {sources.get('controlnet')} has block channels {tuple(cn.config.block_out_channels)} "
                f"and text width {cn.config.cross_attention_dim}, but the base UNet has "
                f"{tuple(unet.config.block_out_channels)} and {unet.config.cross_attention_dim}; use a ControlNet for SD1.5"
            )
    if unet is not None and te is not None and te.config.hidden_size != unet.config.cross_attention_dim:
        raise InputError(
            f"models.base: text encoder width {te.config.hidden_size} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim}"
        )
