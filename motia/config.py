"""The typed job config: one schema for adaptation, outpainting and batch jobs.

A config is YAML. ``extends: other.yaml`` merges this file over another one
(paths relative to this file; chains allowed). Command-line overrides are dotted
``key=value`` pairs whose value is parsed as YAML (``sample.steps=10``,
``outpaint.target_size=[512,1024]``, ``prompt="a beach"``). Unknown keys and
wrong types fail on load with the key's dotted name.

Relative input paths (``video.path``, ``adapt.init_lora``, and model paths starting
with ``./`` or ``../``) written in a config file are resolved against that file's folder, so a
config and its clip can move together; output folders and overrides given on the
command line are relative to the working directory. Two prefixes name bundled
assets: ``tiny:NAME`` for the tiny model bundle and ``sample:clip`` for the demo clip.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .utils import atomic_path


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 needs ``1.0e-4``) and ``9:16`` as a string."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
# YAML 1.1 reads 9:16 as the base-60 number 556; here it stays the string "9:16" (an aspect).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


class _Section(BaseModel):
    # strict: a YAML string "10" is not silently an int; extra keys are typos.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


REVISION_KEYS = ("base", "base_config", "vae", "controlnet", "controlnet_config", "motion_adapter")


class ModelsConfig(_Section):
    """Where the weights come from: diffusers folders, hub ids or single files."""

    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    base_config: str | None = None  # architecture for a single-file base (folder or hub id)
    vae: str | None = None  # e.g. stabilityai/sd-vae-ft-mse, as the reference used
    controlnet: str = "lllyasviel/control_v11p_sd15_inpaint"
    controlnet_config: str | None = None
    # None: the motion module of models.base when that is an AnimateDiff pipeline folder (its unet/ is a
    # UNetMotionModel), else guoyww/animatediff-motion-adapter-v1-5-2
    motion_adapter: str | None = None
    motion_adapter_config: str | None = None  # config.json for an original .ckpt with unusual shapes
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: str = "auto"
    variant: str | None = None
    # Noise schedule of adaptation and sampling: AnimateDiff's linear betas (what the motion
    # module and the reference use), or the base's own scheduler config (SD1.5: scaled_linear).
    schedule: Literal["animatediff", "base"] = "animatediff"
    # Hub revision (branch, tag or commit): one for every hub-id source, or per key ({controlnet: <sha>})
    revision: str | dict[str, str] | None = None

    @field_validator("revision")
    @classmethod
    def _revision_keys(cls, v):
        if isinstance(v, dict):
            bad = sorted(set(v) - set(REVISION_KEYS))
            if bad:
                raise ValueError(f"unknown source {bad[0]!r}; per-source revisions take the keys {', '.join(REVISION_KEYS)}")
        return v


class VideoConfig(_Section):
    """Which frames of which clip, at what size."""

    path: str | None = None
    start: int = Field(0, ge=0)
    max_frames: int | None = Field(None, ge=1)
    stride: int = Field(1, ge=1)
    size: int | None = Field(512, ge=8)  # target length of the side chosen by `resize`
    resize: Literal["short_side", "long_side", "none"] = "short_side"
    # Hard cuts (motia.shots): auto = detect them; off = the clip is one shot; or the shots' first
    # frames, e.g. [0, 30, 76], counted in the frames used (after start/stride/max_frames). Temporal
    # windows, adaptation's training windows and pixel propagation stay within a shot.
    shots: Literal["auto", "off"] | list[int] = "auto"

    @field_validator("shots", mode="before")
    @classmethod
    def _shots(cls, v):
        if isinstance(v, bool):  # YAML 1.1 reads on/off as booleans
            return "auto" if v else "off"
        if v in ("auto", "off"):
            return v
        if not isinstance(v, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in v):
            raise ValueError("must be auto, off, or a list of the shots' first frames such as [0, 30, 76]")
        from motia.shots import normalize_shots  # lazily: the config module stays free of torch

        return normalize_shots(v)


class PropagationSection(_Section):
    """Pixel propagation (motia.propagate): camera motion, then new-region pixels other frames saw.

    Pixel values are at the analysis size (``analysis_size`` long side) for the motion keys;
    ``margin`` is a fraction of the source's long side so it means the same at every scale.
    """

    features: Literal["sift", "orb"] = "sift"  # sift: sub-pixel keypoints; orb: faster, coarser
    analysis_size: int = Field(512, ge=64)  # motion is estimated on frames with this long side
    keyframe_interval: int = Field(8, ge=1)  # frames link to a keyframe: drift grows with d / interval
    min_inliers: int = Field(30, ge=4)  # a frame pair fitted on fewer RANSAC inliers gives nothing
    min_inlier_ratio: float = Field(0.3, gt=0, le=1)  # inliers / matches
    max_error: float = Field(1.0, gt=0)  # inlier RMS reprojection error, px at the analysis size
    # where features fail (a plain sky, a small clip): link to the previous frame by phase correlation + ECC,
    # kept only if the frames then agree and would not at a pixel's offset (motia.propagate.photometric_error)
    dense_fallback: bool = True
    # mark independently moving things (passers-by) per frame and take no pixel from them (motia.movers)
    reject_movers: bool = True
    mover_threshold: float = Field(0.05, gt=0, le=1)  # a pixel differing this much from its warped neighbours moves
    radius: int = Field(100, ge=1, le=16000)  # frames either side that may give pixels
    samples: int = Field(5, ge=1, le=100)  # candidates per pixel for the agreement test
    spacing: int = Field(4, ge=1)  # min frames between a pixel's candidates on one side of it
    margin: float = Field(0.005, ge=0, lt=0.5)  # stay this far inside other frames' source box
    tolerance: float = Field(0.1, gt=0, le=1)  # agreement: mean |value - median| over channels, [0, 1] scale
    min_agree: int = Field(2, ge=1)  # agreeing candidates needed (1: trust a pixel seen once)

    @model_validator(mode="after")
    def _agree_within_samples(self):
        if self.min_agree > self.samples:
            raise ValueError(f"min_agree ({self.min_agree}) must be <= samples ({self.samples})")
        return self


def on_off_words(v):
    """YAML 1.1 reads a bare on/off as a boolean: the mode keys take them back as the words."""
    return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v


class RefineSection(_Section):
    """Coarse-to-fine (motia.outpaint): a coarse pass of the whole canvas at the models' scale, then an
    SDEdit refine pass at the output's scale in spatial tiles. ``outpaint.refine=on`` sets ``mode``."""

    mode: Literal["off", "on", "auto"] = "auto"  # auto: when the output is > auto_ratio x the coarse canvas
    coarse_size: int = Field(512, ge=64)  # the coarse canvas's short side in pixels (what SD1.5 was trained at)
    scale: Literal["output"] | float = "output"  # refine canvas: the output's scale, or this factor x the coarse one
    max_side: int = Field(4096, ge=64)  # the refine canvas's long side at most (px); the scale is capped to it
    strength: float = Field(0.4, ge=0, le=1)  # SDEdit noise level: the refine runs the last strength x steps
    steps: int = Field(25, ge=1)  # the refine's DDIM schedule length (it runs round(strength x steps) of it)
    auto_ratio: float = Field(1.5, ge=1)  # auto refines when output short side / coarse_size exceeds this

    _mode_words = field_validator("mode", mode="before")(lambda v: on_off_words(v))

    @field_validator("scale")
    @classmethod
    def _scale(cls, v):
        if not isinstance(v, str) and not (v > 0):
            raise ValueError("must be 'output' or a factor > 0 of the coarse scale")
        return v


class OutpaintConfig(_Section):
    """The canvas: per-side expansion fractions, or a target size, or a target aspect."""

    left: float = Field(0.0, ge=0)
    right: float = Field(0.0, ge=0)
    top: float = Field(0.0, ge=0)
    bottom: float = Field(0.0, ge=0)
    target_size: list[int] | None = None  # [height, width]
    aspect: str | float | None = None  # "9:16", "16/9", or a number width/height
    multiple: int = Field(8, ge=8)
    # Take new-region pixels that other frames show instead of generating them (motia.known):
    # auto = where the camera motion can reveal any (and OpenCV imports); off = the paper's method.
    propagate: Literal["off", "on", "auto"] = "auto"
    propagation: PropagationSection = PropagationSection()
    refine: RefineSection = RefineSection()

    @field_validator("refine", mode="before")
    @classmethod
    def _refine_mode(cls, v):
        # `outpaint.refine=on` (or off/auto; YAML 1.1 reads on/off as booleans) sets the mode alone.
        v = on_off_words(v)
        return {"mode": v} if isinstance(v, str) else v

    _propagate_words = field_validator("propagate", mode="before")(lambda v: on_off_words(v))

    @field_validator("aspect")
    @classmethod
    def _aspect_parses(cls, v):
        if v is None:
            return v
        from motia.geometry import _parse_aspect  # lazily: the config module stays free of torch

        try:
            _parse_aspect(v)
        except ConfigError as e:  # checked on load, not first when a stage plans the canvas
            raise ValueError(str(e).removeprefix("outpaint.aspect: ")) from None
        return v

    @field_validator("target_size")
    @classmethod
    def _two_ints(cls, v):
        if v is not None and (len(v) != 2 or min(v) < 8):
            raise ValueError("must be [height, width] with both >= 8")
        return v


class LoraSection(_Section):
    targets: str | list[str] = "temporal"  # preset ("temporal", "temporal+spatial") or name regexes
    rank: int = Field(16, ge=1)
    alpha: float = Field(128.0, gt=0)  # 128 at rank 16 = the reference's x8 delta multiplier
    dropout: float = Field(0.0, ge=0, lt=1)


class MaskRanges(_Section):
    """Training border widths per side, as [lo, hi] fractions of that side."""

    left: list[float] = [0.0, 0.4]
    right: list[float] = [0.0, 0.4]
    top: list[float] = [0.0, 0.4]
    bottom: list[float] = [0.0, 0.4]

    @field_validator("left", "right", "top", "bottom")
    @classmethod
    def _range(cls, v):
        if len(v) != 2 or not (0 <= v[0] <= v[1] < 1):
            raise ValueError("must be [lo, hi] with 0 <= lo <= hi < 1")
        return v


class AdaptConfig(_Section):
    """Input-specific adaptation: the per-clip LoRA training recipe (reference defaults)."""

    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    frames: int = Field(16, ge=1)
    batch_size: int = Field(1, ge=1)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    mask: MaskRanges = MaskRanges()
    lora: LoraSection = LoraSection()
    init_lora: str | None = None  # start from this LoRA file/folder (motia, diffusers, AnimateDiff) instead of a fresh init
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = True
    use_8bit_adam: bool = False
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    encode_chunk: int = Field(8, ge=1)  # frames per VAE encode call
    output_dir: str | None = None  # default: <output.dir>/<name>/adapter
    # Train also on native-scale crops of the source at the refine tile size (motia.crops), so the LoRA
    # has seen the clip's textures at the scale the refine stage generates: auto = when the run refines.
    crops: Literal["off", "auto"] = "auto"
    crop_share: float = Field(0.5, ge=0, le=1)  # the share of steps that train on a crop (with crops)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_a_word(cls, v):
        return "no" if v is False else v  # YAML reads a bare `no` as false

    @field_validator("crops", mode="before")
    @classmethod
    def _crops_words(cls, v):
        if v is True:  # YAML reads a bare `on` as true
            raise ValueError("must be auto (crops when the run refines) or off; there is no 'on'")
        return "off" if v is False else v  # and a bare `off` as false


class WindowSection(_Section):
    frames: int = Field(16, ge=1)
    stride: int = Field(4, ge=1)
    weights: Literal["pyramid", "flat"] = "pyramid"


class RegretSection(_Section):
    jump: int = Field(3, ge=1)  # L
    repeats: int = Field(4, ge=0)  # M; 0 = off
    fraction: float = Field(0.5, ge=0, le=1)  # active in this first fraction of the steps


class InsertionSection(_Section):
    k: float = Field(2.0, ge=0)  # scale(p) = exp(-K d(p) / D); 0 = uniform LoRA


class WindowAttentionSection(_Section):
    enabled: bool | Literal["auto"] = "auto"  # auto: on when the canvas's long side > 1024 px
    blocks: list[str] = ["down_blocks.0", "up_blocks.3"]
    grid: list[int] = [2, 2]
    shift: bool = True

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        if len(v) != 2 or min(v) < 1:
            raise ValueError("must be [rows, cols] with both >= 1")
        return v


class RAUSection(_Section):
    """HiDiffusion's RAU-Net (motia.rau): the blocks below the top one at half resolution early on."""

    enabled: bool = False  # for canvases well above 512 px; off by default
    fraction: float = Field(0.4, ge=0, le=1)  # active on the steps with index < fraction * steps


class TilesSection(_Section):
    """Spatial tiles (motia.tiles): every model call sees one window x tile box, blended per latent cell."""

    enabled: bool | Literal["auto"] = "auto"  # auto: tiles when the canvas exceeds one tile
    size: int = Field(512, ge=64)  # tile side in pixels (a multiple of 8: SD1.5's 512)
    overlap: int = Field(128, ge=0)  # pixels shared by neighbouring tiles
    weights: Literal["gaussian", "pyramid", "flat"] = "gaussian"  # spatial blend profile (MultiDiffusion's gaussian)

    @field_validator("size", "overlap")
    @classmethod
    def _on_the_grid(cls, v):
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (the latent grid): use {v - v % 8 or 8} or {v - v % 8 + 8}")
        return v

    @model_validator(mode="after")
    def _fits(self):
        if self.overlap >= self.size:
            raise ValueError(f"sample.tiles.overlap ({self.overlap}) must be below sample.tiles.size ({self.size})")
        return self


class SampleConfig(_Section):
    """Pattern-aware outpainting: DDIM sampling with windows, guidance, regret, insertion."""

    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    guidance_steps: int = Field(15, ge=0)  # guidance on the first N steps, then the cond branch alone
    negative_prompt: str = ""
    # Noise that re-noises the known latents at every step: "fixed" = the run's initial noise
    # throughout (the reference), "fresh" = new noise from the run's generator each step.
    known_noise: Literal["fixed", "fresh"] = "fixed"
    window: WindowSection = WindowSection()
    regret: RegretSection = RegretSection()
    insertion: InsertionSection = InsertionSection()
    lora_scale: float = Field(1.0, ge=0)
    controlnet_scale: float = Field(1.0, ge=0)
    window_attention: WindowAttentionSection = WindowAttentionSection()
    rau: RAUSection = RAUSection()
    tiles: TilesSection = TilesSection()
    decode_chunk: int = Field(8, ge=1)  # frames per VAE decode call
    channels_last: bool = False  # UNet + ControlNet weights in channels-last during sampling
    compile: bool = False  # torch.compile the UNet's forward for the run (first calls compile)


class OutputConfig(_Section):
    """What is written, at which scale, and how it is encoded."""

    dir: str = "outputs"
    name: str | None = None  # default: the clip's file stem
    mp4: bool = True
    gif: bool = False
    frames: bool = False
    side_by_side: bool = True
    resolution: Literal["native", "model"] = "native"  # the source's own scale, or video.size's (the model's canvas)
    height: int | None = Field(None, ge=16)  # a delivery frame height, scaled once from native (width follows)
    width: int | None = Field(None, ge=16)  # a delivery frame width (height follows); both: that exact frame size
    paste: bool = True  # paste the source pixels back so the known region is exactly the input
    # Seam feather on the generated side: pixels at the written scale (>= 1), or a fraction of
    # the source's short side there (< 1; 1/64 = 8 px at 512, 17 px at 1080); 0 = hard paste.
    feather: int | float = Field(0.015625, ge=0)
    keep_audio: bool = True
    crf: int = Field(18, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow"] = "medium"  # x264's speed/size trade-off
    fps: float | None = None  # default: the source fps / stride

    @field_validator("height", "width")
    @classmethod
    def _even(cls, v):
        # H.264 (4:2:0) frames have even sides: an odd size would be written one pixel larger.
        if v is not None and v % 2:
            raise ValueError(f"must be even (H.264 frames are): use {v - 1} or {v + 1}")
        return v


class CaptionSection(_Section):
    model: str = "Salesforce/blip-image-captioning-base"
    max_new_tokens: int = Field(30, ge=1)


class JobConfig(_Section):
    """One job: a clip, the models, and how to adapt and outpaint it."""

    seed: int = 0
    prompt: str = ""  # the clip's text prompt; "auto" captions the middle frame (BLIP)
    models: ModelsConfig = ModelsConfig()
    video: VideoConfig = VideoConfig()
    outpaint: OutpaintConfig = OutpaintConfig()
    adapt: AdaptConfig = AdaptConfig()
    sample: SampleConfig = SampleConfig()
    output: OutputConfig = OutputConfig()
    caption: CaptionSection = CaptionSection()

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.sample.window.stride > self.sample.window.frames:
            raise ValueError("sample.window.stride must be <= sample.window.frames")
        return self

    def run_name(self) -> str:
        if self.output.name:
            return self.output.name
        if self.video.path and not self.video.path.startswith("sample:"):
            return Path(self.video.path).stem
        return "sample"

    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.run_name()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading

def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; a missing file or bad YAML is a one-line ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give one of its YAML files")
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (a video or an image?); give a YAML config, and the "
                          "clip as video.path=...") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


_CANVAS_MODES = {"left": "sides", "right": "sides", "top": "sides", "bottom": "sides",
                 "target_size": "target_size", "aspect": "aspect"}


def choose_canvas(outpaint: dict, chosen: dict) -> dict:
    """``outpaint`` without the canvas keys of a mode other than the one(s) ``chosen`` sets.

    A later layer (a config that ``extends``, an override) that picks a canvas mode
    (non-zero sides, ``target_size`` or ``aspect``) replaces the inherited canvas of
    another mode instead of conflicting with it: ``outpaint.aspect=9:16`` on top of
    base.yaml's ``left/right: 0.5`` gives a 9:16 canvas. Sides of the same mode merge
    key by key (``outpaint.left=0.3`` keeps an inherited ``right``).
    """
    modes = {_CANVAS_MODES[k] for k, v in chosen.items() if k in _CANVAS_MODES and v not in (None, 0, 0.0)}
    if not modes or not isinstance(outpaint, dict):
        return outpaint
    return {k: v for k, v in outpaint.items() if _CANVAS_MODES.get(k) in (None, *modes)}


def _shorthand(data: dict) -> dict:
    """``outpaint: {refine: on}`` as ``outpaint: {refine: {mode: on}}``: the mode alone, so a later layer that says
    ``refine: on`` keeps the other refine keys of the layers below it."""
    outpaint = data.get("outpaint")
    if isinstance(outpaint, dict) and isinstance(outpaint.get("refine"), (str, bool)):
        data = {**data, "outpaint": {**outpaint, "refine": {"mode": outpaint["refine"]}}}
    return data


def merge_layers(base: dict, over: dict) -> dict:
    """``deep_merge`` of two config layers, with the canvas mode rule of ``choose_canvas``."""
    base, over = _shorthand(base), _shorthand(over)
    if isinstance(base.get("outpaint"), dict) and isinstance(over.get("outpaint"), dict):
        base = {**base, "outpaint": choose_canvas(base["outpaint"], over["outpaint"])}
    return deep_merge(base, over)


def deep_merge(base: dict, over: dict) -> dict:
    """Merge ``over`` into a copy of ``base``; mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_input_paths(data: dict, folder: Path) -> None:
    video = data.get("video")
    if isinstance(video, dict) and isinstance(video.get("path"), str):
        video["path"] = _rel(video["path"], folder, always=True)
    models = data.get("models")
    if isinstance(models, dict):
        for k, v in models.items():
            if isinstance(v, str) and k not in ("dtype", "device", "variant", "schedule", "revision"):
                models[k] = _rel(v, folder, always=False)
    adapt = data.get("adapt")
    if isinstance(adapt, dict) and isinstance(adapt.get("init_lora"), str):
        adapt["init_lora"] = _rel(adapt["init_lora"], folder, always=True)


def _rel(value: str, folder: Path, always: bool) -> str:
    if ":" in value.split("/")[0] or os.path.isabs(value):  # tiny:, sample:, C:, absolute
        return value
    if always or value.startswith(("./", "../")):
        return str((folder / value).resolve())
    return value


def load_raw(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file and everything it ``extends``, merged, input paths resolved."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{path}: 'extends' loops back on itself ({chain})")
    data = read_yaml(path)
    _resolve_input_paths(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a file path, got {type(parent).__name__}")
    return merge_layers(load_raw(path.parent / parent, (*_seen, path)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. sample.steps=10")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    data = deep_merge(data, {})
    for item in overrides:
        parts, value = parse_override(item)
        if parts == ["outpaint", "refine"] and isinstance(value, (str, bool)):
            parts = ["outpaint", "refine", "mode"]  # `outpaint.refine=on` sets the mode, keeps the rest
        if len(parts) == 2 and parts[0] == "outpaint" and isinstance(data.get("outpaint"), dict):
            data["outpaint"] = choose_canvas(data["outpaint"], {parts[1]: value})
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, prefix + name + ".")
    return keys


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] = JobConfig,
                            overrides: Sequence[str] = ()) -> str:  # fmt: skip
    """One line per problem, each naming the dotted key and the fix.

    A key set by one of ``overrides`` (``key=value``) is blamed on that override, not on
    ``source``: the file does not hold the bad value.
    """
    given = {item.partition("=")[0].strip(): item for item in overrides}
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        # An override of this key, of a section holding it (`outpaint.refine=on` sets refine.mode), or of a
        # key within the section a check names (`sample.tiles.overlap=...`).
        blamed = [k for k in given if k == key or key.startswith(k + ".") or k.startswith(key + ".")]
        source_here = f"override {given[blamed[-1]]!r}" if blamed else source
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, _known_keys(model), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{source_here}: unknown key '{key}'{hint}")
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict) else ""
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source_here}: {key}: {msg}{got_s}")
    return "; ".join(lines)


def validate(data: dict, source: str = "config", model: type[BaseModel] = JobConfig, overrides: Sequence[str] = ()):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, model, overrides)) from None


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> JobConfig:
    """Load, merge (``extends``), override and validate a job config."""
    data = load_raw(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    return validate(apply_overrides(data, overrides), source, overrides=overrides)


def dump_config(cfg: BaseModel, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) so every output says how it was made."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path
