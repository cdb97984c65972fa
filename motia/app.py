"""The local web app (`motia app`): pick a clip and a canvas, preview, adapt, outpaint and compare in a browser.

It runs the CLI's library calls: ``job.preview`` and ``planning.plan_stages`` (each
sampling stage's canvas, tiles and UNet calls) for the instant preview; ``batch``'s
adapter cache and ``adapt.adapt_from_config`` for the adapter (a cache hit skips
training, and ``motia batch`` shares the entries);
``outpaint.outpaint_from_config`` for the result; all on one ``job.ModelCache``, so the
models load once per process. Outputs land in the config's run folder
(``<output.dir>/<clip stem>/``), where the CLI looks too.

``App`` is the logic and knows nothing about gradio (tests drive it directly);
``build_ui`` lays the page out on it and ``launch`` serves it. gradio is the optional
extra ``motia[app]``, imported by those two only, so the library imports without it.

Served beyond this machine (a ``--host`` other than loopback) the page asks for a user
and password (``resolve_auth``: ``--auth``, ``--auth-file`` or ``$MOTIA_APP_AUTH``, checked
by gradio's own login), or runs open only with an explicit ``--no-auth``: whoever reaches
the port can otherwise spend the GPU and download every run's outputs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

from motia.config import JobConfig, apply_overrides, load_raw, validate
from motia.errors import ConfigError, InputError, MotiaError

log = logging.getLogger(__name__)

CANVAS_MODES = ("sides", "aspect", "target size")
ASPECTS = ("16:9", "9:16", "1:1", "4:3")
WINDOW_ATTENTION = {"auto": "auto", "on": True, "off": False}  # page choice -> sample.window_attention.enabled
CANVAS_KEYS = ("left", "right", "top", "bottom", "target_size", "aspect")  # outpaint keys the page's canvas sets
REFINE = ("auto", "on", "off")  # page choice = outpaint.refine.mode (the rest of outpaint.refine: the config's)
INSTALL_HINT = 'pip install "motia[app]"'
AUTH_ENV = "MOTIA_APP_AUTH"  # USER:PASSWORD, so the password stays out of the shell history

Report = Callable[[float, str], None]  # (fraction done, one line of text)
# A small canvas (the tiny config's is 144 px wide) is scaled up to the preview box, in sharp pixels.
CSS = "#preview img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


@dataclass
class Choices:
    """What the page sets. Everything else comes from the config the app was started with."""

    video: str | None = None  # a video file (an upload, or the bundled sample)
    canvas: str = "sides"  # one of CANVAS_MODES
    left: float = 0.0  # sides: fractions of the source width / height
    right: float = 0.0
    top: float = 0.0
    bottom: float = 0.0
    aspect: str = "16:9"  # aspect: width:height
    height: int = 0  # target size in pixels (0 = not set)
    width: int = 0
    prompt: str = ""
    auto_caption: bool = False  # prompt: auto (a BLIP caption of the middle frame)
    seed: int = 0
    steps: int = 25  # sample.steps
    guidance: float = 7.5  # sample.guidance_scale
    k: float = 2.0  # sample.insertion.k
    regret: int = 4  # sample.regret.repeats
    window_attention: str = "auto"  # one of WINDOW_ATTENTION
    refine: str = "auto"  # outpaint.refine.mode, one of REFINE

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def format_seconds(seconds: float) -> str:
    """1:05, or 1:02:03 past an hour."""
    s = max(0, int(round(seconds)))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepReport:
    """A stage's per-step callback turned into one progress line: ``adapt 12/60 · loss 0.1234 · 0:45 left``.

    The time left comes from the pace since the first reported step, so model loading
    and latent encoding before it do not inflate it; there is none before a second step.
    """

    def __init__(self, label: str, total: int | None, report: Report | None = None,
                 clock: Callable[[], float] = time.perf_counter):  # fmt: skip
        self.label, self.total, self.report, self.clock = label, total, report, clock
        self.step, self.loss, self.line = 0, None, ""
        self._first: tuple[int, float] | None = None

    def __call__(self, info: dict) -> None:
        self.step = int(info["step"])
        self.total = int(info.get("total", self.total or self.step))
        self.loss = info.get("loss", self.loss)
        now = self.clock()
        if self._first is None:
            self._first = (self.step, now)
        parts = [f"{self.label} {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        first_step, first_time = self._first
        if self.step > first_step:
            left = (now - first_time) / (self.step - first_step) * (self.total - self.step)
            parts.append(f"{format_seconds(left)} left")
        self.line = " · ".join(parts)
        if self.report is not None:
            self.report(self.step / max(1, self.total), self.line)


class App:
    """The app's state: the config it was started with, the loaded models, the last clip read.

    Methods take the page's ``Choices`` and raise ``MotiaError`` with the CLI's one-line
    messages for bad input. ``adapt`` and ``outpaint`` must not run at the same time
    (the page queues them one at a time): they share the loaded models.
    """

    def __init__(self, config: str | os.PathLike | None = None, overrides: Sequence[str] = ()):
        from motia.job import REPO_CONFIGS, ModelCache

        self.config_path = Path(config) if config is not None else REPO_CONFIGS / "tiny.yaml"
        self.data = apply_overrides(load_raw(self.config_path), list(overrides))
        self.source = str(self.config_path)
        self.base = validate(self.data, self.source, overrides=list(overrides))  # a bad config or override fails at start
        self.models = ModelCache()
        self._clip_lock = threading.Lock()
        self._clip_key = self._clip = None

    # --- what the page starts with and shows about the setup

    def defaults(self) -> Choices:
        """The page's initial choices, from the config (its canvas mode, prompt, seed, sampling options)."""
        c, o, s = self.base, self.base.outpaint, self.base.sample
        ch = Choices(prompt="" if c.prompt == "auto" else c.prompt, auto_caption=c.prompt == "auto", seed=c.seed,
                     steps=s.steps, guidance=s.guidance_scale, k=s.insertion.k, regret=s.regret.repeats,
                     window_attention={True: "on", False: "off"}.get(s.window_attention.enabled, "auto"),
                     refine=o.refine.mode)  # fmt: skip
        if o.target_size:
            ch.canvas, (ch.height, ch.width) = "target size", o.target_size
        elif o.aspect is not None:
            ch.canvas, ch.aspect = "aspect", str(o.aspect)
        else:
            ch.left, ch.right, ch.top, ch.bottom = o.left, o.right, o.top, o.bottom
        return ch

    def is_tiny(self) -> bool:
        m = self.base.models
        return all(str(v).startswith("tiny:") for v in (m.base, m.controlnet, m.motion_adapter))

    def adapters_dir(self) -> Path:
        from motia.batch import adapter_cache_dir

        return adapter_cache_dir()

    def allowed_paths(self) -> list[str]:
        """Folders the page may serve files from: the outputs, the adapter cache, the bundled sample."""
        from motia.video import sample_clip_path

        return [str(Path(self.base.output.dir).resolve()), str(self.adapters_dir().resolve()),
                str(sample_clip_path().parent)]  # fmt: skip

    def banner(self) -> str:
        """Markdown: the config, the models, where outputs and adapters go."""
        m = self.base.models
        if self.is_tiny():
            models = ("the tiny random bundle: shows the pipeline on a CPU in seconds, not pretty pictures "
                      "(real weights: `motia app configs/base.yaml`)")  # fmt: skip
        else:
            models = f"`{m.base}` + ControlNet `{m.controlnet}` + motion module `{m.motion_adapter}` ({m.device})"
        return (
            f"**Config** `{_show(self.config_path)}` · **models** {models}  \n"
            f"**Outputs** `{_show(Path(self.base.output.dir) / '<clip name>')}/` · "
            f"**adapters** `{_show(self.adapters_dir())}` · one job at a time: Adapt and Outpaint wait in line."
        )

    # --- the job config of a choice

    def config(self, ch: Choices) -> JobConfig:
        """The app's config with the page's clip, canvas and sampling choices; ConfigError names a bad key."""
        if not ch.video:
            raise InputError("no clip: upload a video, or press 'Use the sample clip'")
        data = copy.deepcopy(self.data)
        data.setdefault("video", {})["path"] = str(ch.video)
        data["outpaint"] = _outpaint(data.get("outpaint") or {}, ch)
        data["prompt"] = "auto" if ch.auto_caption else (ch.prompt or "")
        data["seed"] = _int(ch.seed, "seed")
        s = data.setdefault("sample", {})
        s["steps"] = _int(ch.steps, "sample.steps")
        s["guidance_scale"] = float(ch.guidance)
        s["insertion"] = {**(s.get("insertion") or {}), "k": float(ch.k)}
        s["regret"] = {**(s.get("regret") or {}), "repeats": _int(ch.regret, "sample.regret.repeats")}
        if ch.window_attention not in WINDOW_ATTENTION:
            raise ConfigError(f"window attention {ch.window_attention!r}: use one of {', '.join(WINDOW_ATTENTION)}")
        s["window_attention"] = {**(s.get("window_attention") or {}), "enabled": WINDOW_ATTENTION[ch.window_attention]}
        return validate(data, self.source)

    def clip(self, cfg: JobConfig):
        """The config's frames (``planning.load_clip``), kept while file, ``video`` section and read size stay the same.

        With refine not off the size it is read at follows the canvas, ``outpaint.refine`` and
        ``output`` (``planning.model_size``): then those sections are part of the key too.
        """
        from motia.planning import load_clip, video_path

        path = video_path(cfg)
        try:
            st = path.stat()
        except OSError:
            st = None
        refine = cfg.outpaint.refine.mode != "off"
        scale = (cfg.outpaint.model_dump_json(), cfg.output.model_dump_json()) if refine else ()
        key = (str(path), st and st.st_size, st and st.st_mtime_ns, cfg.video.model_dump_json(), scale)
        with self._clip_lock:
            if key != self._clip_key:
                self._clip, self._clip_key = load_clip(cfg), key
            return self._clip

    def keep_clip(self, cfg: JobConfig) -> JobConfig:
        """The config with its clip copied into the run folder (once), so its ``config.yaml`` reruns later.

        The page hands over gradio's temporary copy of an upload, which gradio deletes
        after a day; the run folder's copy keeps the file name, so the run folder stays the same.
        """
        from motia.planning import video_path
        from motia.utils import atomic_path

        src = video_path(cfg).resolve()
        dest = (cfg.run_dir() / src.name).resolve()
        if src != dest:
            same = dest.is_file() and (dest.stat().st_size, dest.stat().st_mtime_ns) == (src.stat().st_size,
                                                                                         src.stat().st_mtime_ns)
            if not same:
                with atomic_path(dest) as tmp:
                    shutil.copy2(src, tmp)
        return cfg.model_copy(update={"video": cfg.video.model_copy(update={"path": str(dest)})})

    # --- the three actions

    def preview(self, ch: Choices) -> tuple[Path, str]:
        """``motia preview`` (the PNG in the run folder) and the work estimate of each stage as Markdown."""
        from motia import job, planning

        cfg = self.config(ch)
        clip = self.clip(cfg)
        stages = planning.plan_stages(cfg, clip)  # `motia info`'s stages: coarse, and refine when it runs
        png = job.preview(self.keep_clip(cfg))
        return png, estimate_text(cfg, clip, stages)

    def _resolved(self, ch: Choices):
        """The config with ``prompt: auto`` captioned, the clip, and the clip's adapter-cache key."""
        from motia.batch import adapter_key
        from motia.caption import resolve_prompt

        cfg = self.config(ch)
        clip = self.clip(cfg)  # read (and so checked) before it is kept
        cfg = self.keep_clip(cfg)
        prompt = resolve_prompt(cfg, clip)
        if prompt != cfg.prompt:
            cfg = cfg.model_copy(update={"prompt": prompt})
        return cfg, clip, adapter_key(cfg, clip)

    def adapt(self, ch: Choices, report: Report | None = None) -> dict:
        """The clip's adapter: from the adapter cache when these frames, prompt, seed and recipe were adapted
        before (``cached: True``), else trained now (``report`` sees every step)."""
        from motia.batch import find_adapter, train_adapter

        cfg, clip, key = self._resolved(ch)
        found = find_adapter(key)
        if found is not None:
            return {"adapter": found, "key": key, "cached": True, "prompt": cfg.prompt}
        track = StepReport("adapt", cfg.adapt.steps, report)
        start = time.perf_counter()
        with self._models_on_failure():
            path = train_adapter(cfg, clip, key, models=self.models, callback=track)
        return {"adapter": path, "key": key, "cached": False, "prompt": cfg.prompt, "steps": track.step,
                "total": track.total, "loss": track.loss, "seconds": time.perf_counter() - start}  # fmt: skip

    def outpaint(self, ch: Choices, report: Report | None = None) -> dict:
        """Outpaint with the clip's cached adapter into the run folder; ``outpaint_from_config``'s summary."""
        from motia.batch import find_adapter
        from motia.outpaint import outpaint_from_config
        from motia.runs import lock_run_folder

        # The run folder is locked before the clip is copied into it: another live run there is refused.
        with lock_run_folder(self.config(ch).run_dir()):
            cfg, _, key = self._resolved(ch)
            adapter = find_adapter(key)
            if adapter is None:
                raise InputError("no adapter for this clip, prompt, seed and adaptation recipe yet: press Adapt first")
            track = StepReport("outpaint", None, report)
            with self._models_on_failure():
                # The app replaces its own earlier result for this clip (the README says so), whatever the canvas.
                summary = outpaint_from_config(cfg, lora=str(adapter), overwrite=True, progress=False,
                                               models=self.models, callback=track)  # fmt: skip
        return {**summary, "adapter": str(adapter), "key": key, "steps": track.step, "total": track.total,
                "refine_mode": cfg.outpaint.refine.mode}  # fmt: skip

    @contextlib.contextmanager
    def _models_on_failure(self):
        """Drop the loaded models after an internal failure (they may be half-changed); keep them for bad input."""
        try:
            yield
        except MotiaError:
            raise
        except Exception:
            self.models.clear()
            raise


def _show(path: Path) -> str:
    """A path as the person who started the app would write it: relative to the working folder when inside it."""
    path = Path(path).expanduser()
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        home = Path.home()
        return str(path) if not path.is_relative_to(home) else str(Path("~") / path.relative_to(home))


def _int(value, key: str) -> int:
    """A whole number from a page field (sliders and number boxes may send 8.0); ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ConfigError(f"{key}: give a whole number, got {value!r}")
    return int(value)


def _outpaint(section: dict, ch: Choices) -> dict:
    """The config's ``outpaint`` section with the page's canvas (replacing the config's, whatever its mode) and
    refine mode (the config's other ``outpaint.refine`` keys kept, as the override ``outpaint.refine.mode=`` does)."""
    if ch.refine not in REFINE:
        raise ConfigError(f"refine {ch.refine!r}: use one of {', '.join(REFINE)}")
    kept = {k: v for k, v in section.items() if k not in CANVAS_KEYS}
    refine = kept.get("refine")
    kept["refine"] = {**(refine if isinstance(refine, dict) else {}), "mode": ch.refine}
    return {**kept, **_canvas(ch)}


def _canvas(ch: Choices) -> dict:
    """The ``outpaint`` keys of the page's canvas mode (the modes are exclusive, as in a config)."""
    if ch.canvas == "sides":
        return {side: float(getattr(ch, side) or 0.0) for side in ("left", "right", "top", "bottom")}
    if ch.canvas == "aspect":
        return {"aspect": str(ch.aspect)}
    if ch.canvas == "target size":
        if not ch.height or not ch.width:
            raise ConfigError("outpaint.target_size: give the canvas height and width in pixels")
        return {"target_size": [_int(ch.height, "outpaint.target_size"), _int(ch.width, "outpaint.target_size")]}
    raise ConfigError(f"canvas mode {ch.canvas!r}: use one of {', '.join(CANVAS_MODES)}")


def estimate_text(cfg: JobConfig, clip, stages) -> str:
    """The work estimate as Markdown (``motia info``'s numbers): the canvas, the adaptation, each sampling stage.

    ``stages``: ``planning.plan_stages`` of ``clip``, the frames at the models' (the coarse) scale.
    """
    coarse = stages.coarse
    canvas, work = coarse.canvas, coarse.work
    e = canvas.expansion
    added = ", ".join(f"{side} {px}" for side, px in e.items() if px) or "nothing"
    guided = f" ({work['guided_calls']} guided)" if work["guided_calls"] else ""
    name = "Coarse canvas" if stages.refine is not None else "Canvas"
    return (
        f"**{name}** {canvas.height} × {canvas.width} px (source {clip.height} × {clip.width}; adds {added}) · "
        f"**frames** {work['frames']} · **windows** {work['windows']}  \n"
        f"**Adapt** {cfg.adapt.steps} steps on {min(cfg.adapt.frames, work['frames'])}-frame windows · "
        f"**Outpaint** {work['steps']} steps{_in_tiles(coarse)}, {work['unet_calls']} UNet calls{guided}  \n"
        + _refine_estimate(cfg, stages)
    )


def _in_tiles(stage) -> str:
    """`` in 12 tiles of 512 × 512 px`` for a tiled stage; nothing for one run on its whole canvas."""
    if not stage.tiled:
        return ""
    h, w = stage.box
    return f" in {len(stage.tiles)} tiles of {h} × {w} px"


def _refine_estimate(cfg: JobConfig, stages) -> str:
    """The refine stage's line: its canvas, scale, tiles, steps and UNet calls, or why it does not run."""
    from motia.planning import refine_schedule

    r, st = cfg.outpaint.refine, stages.refine
    if st is None:
        if r.mode == "off":
            return "**Refine** off: one pass at the canvas's scale, upsampled to the output"
        if r.mode == "auto":
            return (f"**Refine** auto: not needed, the output's short side is at most {r.auto_ratio:g}× "
                    f"the coarse canvas's {r.coarse_size} px")  # fmt: skip
        return "**Refine** on, at strength 0: the coarse result upsampled, no refine step"
    c, work = st.canvas, st.work
    first, length = refine_schedule(cfg)
    tiles = _in_tiles(st) or " on the whole canvas"
    total = sum(s.work["unet_calls"] for s in stages.stages)
    return (f"**Refine** at the output's resolution: {c.height} × {c.width} px "
            f"({c.src_h / stages.coarse.canvas.src_h:.2f}× the coarse canvas){tiles}, {length - first} of {length} "
            f"steps (strength {r.strength:g}), {work['unet_calls']} UNet calls · "
            f"**total** {total} UNet calls")  # fmt: skip


def adapt_text(result: dict) -> str:
    key = f"`{result['key']}`"
    if result["cached"]:
        return f"**Adapter cache hit** {key}: adapted before with these frames, prompt, seed and recipe; no training."
    loss = f", final loss {result['loss']:.4f}" if result.get("loss") is not None else ""
    return (f"**Adapter trained** {key}: {result['steps']}/{result['total']} steps in "
            f"{format_seconds(result['seconds'])}{loss}.")  # fmt: skip


def outpaint_text(summary: dict) -> str:
    """The result as Markdown: the written size, each stage that ran (canvas, tiles, UNet calls, time), the files."""
    c = summary.get("output_canvas") or summary["canvas"]
    run_dir = Path(summary["outputs"]["config"]).parent
    stages = summary.get("stages") or {}
    done = [f"{name} pass on {_h_by_w(st['canvas'])}" + (f" in {st['tiles']} tiles" if st.get("tiles", 1) > 1 else "")
            + f", {st['unet_calls']} UNet calls in {format_seconds(st.get('seconds', 0))}"
            for name, st in stages.items()]  # fmt: skip
    if stages and "refine" not in stages:
        mode = summary.get("refine_mode")
        done.append("no refine pass" + {"off": ": refine off", "auto": ": refine auto, not needed at this size"}
                    .get(mode, ""))  # fmt: skip
    return (f"**Outpainted** {summary['frames']} frames at {c['height']} × {c['width']}: "
            f"{summary['steps']}/{summary['total']} denoising steps in {format_seconds(summary['time_s'])}"
            + (f" ({'; '.join(done)})" if done else "")
            + f"; files in `{run_dir}`. Prompt: {summary['prompt']!r}.")  # fmt: skip


def _h_by_w(size: str) -> str:
    """summary.json's ``144x64 (W x H)`` as the page writes sizes: ``64 × 144``."""
    m = re.match(r"(\d+)x(\d+)", size)
    return f"{m[2]} × {m[1]}" if m else size


# ----------------------------------------------------------------------------- the page


def require_gradio():
    """The gradio module, or a MotiaError saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise MotiaError(f"motia app needs gradio, an optional extra: {INSTALL_HINT}") from None
    major = int(str(gradio.__version__).split(".")[0])
    if major < 6:
        raise MotiaError(f"motia app needs gradio 6 (found {gradio.__version__}): pip install -U \"motia[app]\"")
    return gradio


def build_ui(app: App):
    """The page (a ``gradio.Blocks``) on ``app``: clip, canvas, options, preview, Adapt, Outpaint, results."""
    gr = require_gradio()
    from motia.video import sample_clip_path

    d = app.defaults()

    def guarded(action: Callable):
        """Bad input -> the CLI's ``error: ...`` line in the page; the app keeps serving."""

        def run(*args):
            try:
                return action(*args)
            except MotiaError as e:
                log.warning("error: %s", e)
                raise gr.Error(f"error: {e}", duration=None, print_exception=False) from None
            except Exception as e:  # an internal failure: say so, the terminal has the traceback
                log.exception("internal failure")
                raise gr.Error(f"error: internal {type(e).__name__}: {e} (see the terminal running motia app)",
                               duration=None, print_exception=False) from None  # fmt: skip

        return run

    def progress_of(progress) -> Report:
        return lambda fraction, text: progress(fraction, desc=text)

    def preview(**values):
        if not values.get("video"):
            return None, "Upload a clip, or press **Use the sample clip**."
        png, text = guarded(app.preview)(Choices(**values))
        return str(png), text

    def adapt(progress=gr.Progress(), **values):
        progress(0, desc="adapt: reading the clip, loading the models")
        result = guarded(app.adapt)(Choices(**values), progress_of(progress))
        return adapt_text(result), [str(result["adapter"])]

    def outpaint(progress=gr.Progress(), **values):
        progress(0, desc="outpaint: reading the clip, loading the models")
        summary = guarded(app.outpaint)(Choices(**values), progress_of(progress))
        out = summary["outputs"]
        files = [p for p in (out.get("mp4"), summary["adapter"], out.get("config")) if p]
        return out.get("mp4"), out.get("side_by_side"), files, outpaint_text(summary)

    def show_mode(mode):
        return (gr.update(visible=mode == "sides"), gr.update(visible=mode == "aspect"),
                gr.update(visible=mode == "target size"))  # fmt: skip

    aspects = list(ASPECTS) + ([d.aspect] if d.aspect not in ASPECTS else [])
    with gr.Blocks(title="motia", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        gr.Markdown("## motia: video outpainting\n" + app.banner())
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Clip", sources=["upload"], elem_id="clip", height=260)
                use_sample = gr.Button("Use the sample clip", size="sm", elem_id="use-sample")
                canvas = gr.Radio(list(CANVAS_MODES), value=d.canvas, label="Canvas", elem_id="canvas-mode",
                                  info="sides: fractions of the source's width (left, right) and height (top, "
                                       "bottom); aspect: width:height; target size: pixels")  # fmt: skip
                with gr.Column(visible=d.canvas == "sides") as sides:
                    side = {}
                    for pair in (("left", "right"), ("top", "bottom")):
                        with gr.Row():
                            for name in pair:
                                side[name] = gr.Slider(0, 2, value=getattr(d, name), step=0.05, label=name)
                aspect = gr.Radio(aspects, value=d.aspect, label="Aspect (width:height)", visible=d.canvas == "aspect")
                with gr.Row(visible=d.canvas == "target size") as size:
                    height = gr.Number(d.height, label="height (px)", precision=0, minimum=0)
                    width = gr.Number(d.width, label="width (px)", precision=0, minimum=0)
                r = app.base.outpaint.refine
                refine = gr.Radio(list(REFINE), value=d.refine, label="Refine at the output's resolution",
                                  elem_id="refine", info=f"a second pass over the output-sized canvas in tiles, for "
                                  f"detail instead of upsampled pixels; auto: when the output's short side is over "
                                  f"{r.auto_ratio:g}× {r.coarse_size} px (outpaint.refine.mode)")  # fmt: skip
                with gr.Accordion("Sampling options", open=False):
                    prompt = gr.Textbox(d.prompt, label="Prompt")
                    auto_caption = gr.Checkbox(d.auto_caption, label="Auto caption (BLIP) instead of the prompt")
                    seed = gr.Number(d.seed, label="Seed", precision=0)
                    steps = gr.Slider(1, max(100, d.steps), value=d.steps, step=1, label="Steps")
                    guidance = gr.Slider(1, max(20, d.guidance), value=d.guidance, step=0.5,
                                         label=f"Guidance (on the first {app.base.sample.guidance_steps} steps)")
                    k = gr.Slider(0, max(8, d.k), value=d.k, step=0.1, label="LoRA fade K (0 = uniform)")
                    regret = gr.Slider(0, max(8, d.regret), value=d.regret, step=1,
                                       label="Noise regret repeats M (0 = off)")
                    window_attention = gr.Radio(list(WINDOW_ATTENTION), value=d.window_attention,
                                                label="Window attention (auto: long side > 1024 px)")
                with gr.Row():
                    adapt_btn = gr.Button("Adapt", variant="primary", elem_id="adapt")
                    outpaint_btn = gr.Button("Outpaint", variant="primary", elem_id="outpaint")
            with gr.Column():
                preview_img = gr.Image(label="Preview: known box (green), LoRA strength (red = full, blue = none)",
                                       type="filepath", format="png", interactive=False, height=320,
                                       elem_id="preview")  # fmt: skip
                estimate = gr.Markdown("Upload a clip, or press **Use the sample clip**.", elem_id="estimate")
                # Tall enough that Adapt's progress bar (step, loss, time left) reads well over it.
                status = gr.Markdown(elem_id="status", min_height=110, container=True, padding=True)
        with gr.Row():
            result = gr.Video(label="Outpainted", interactive=False, elem_id="result")
            compare = gr.Video(label="Side by side: the source on the canvas | the result", interactive=False,
                               elem_id="compare")  # fmt: skip
        downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")

        settings = dict(video=video, canvas=canvas, **side, aspect=aspect, height=height, width=width, prompt=prompt,
                        auto_caption=auto_caption, seed=seed, steps=steps, guidance=guidance, k=k, regret=regret,
                        window_attention=window_attention, refine=refine)  # fmt: skip
        assert list(settings) == Choices.names()
        use_sample.click(lambda: str(sample_clip_path()), outputs=video, api_name="sample")
        canvas.change(show_mode, canvas, [sides, aspect, size], api_visibility="private", queue=False)
        triggers = [video.change, canvas.change, aspect.change, height.submit, width.submit, height.blur, width.blur,
                    *(s.release for s in side.values()), steps.release, guidance.release, k.release, regret.release,
                    window_attention.change, refine.change]  # fmt: skip
        gr.on(triggers, preview, inputs_kwargs=settings, outputs=[preview_img, estimate], api_name="preview",
              trigger_mode="always_last", concurrency_id="preview", concurrency_limit=2)  # fmt: skip
        # One job at a time: both buttons share one queue slot (they share the loaded models).
        adapt_btn.click(adapt, inputs_kwargs=settings, outputs=[status, downloads], api_name="adapt",
                        concurrency_id="job", concurrency_limit=1)  # fmt: skip
        outpaint_btn.click(outpaint, inputs_kwargs=settings, outputs=[result, compare, downloads, status],
                           api_name="outpaint", concurrency_id="job", concurrency_limit=1)  # fmt: skip
    return page


def is_loopback(host: str) -> bool:
    """Whether ``host`` serves this machine only: ``localhost``, 127.0.0.0/8 or ::1."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def parse_credentials(text: str, where: str) -> tuple[str, str]:
    """``USER:PASSWORD`` -> (user, password) (the password may hold ':'); ConfigError naming ``where`` otherwise."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{where}: give USER:PASSWORD (both non-empty)")
    return user, password


def _read_auth_file(path: str | os.PathLike) -> tuple[str, str]:
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except OSError as e:
        raise InputError(f"--auth-file {path}: cannot read it ({e.strerror or e}); write USER:PASSWORD on a line of it"
                         ) from None  # fmt: skip
    except UnicodeDecodeError:
        raise InputError(f"--auth-file {path}: not a text file; write USER:PASSWORD on a line of it") from None
    found = [ln for ln in lines if ln and not ln.startswith("#")]
    if not found:
        raise InputError(f"--auth-file {path}: it is empty; write USER:PASSWORD on a line of it")
    if path.stat().st_mode & 0o077:
        log.warning("--auth-file %s can be read by other users of this machine (chmod 600 %s)", path, path)
    return parse_credentials(found[0], f"--auth-file {path}")


def resolve_auth(host: str, auth: str | None = None, auth_file: str | os.PathLike | None = None,
                 no_auth: bool = False, environ=None) -> tuple[str, str] | None:  # fmt: skip
    """The (user, password) the page asks for, or None (no login).

    From ``auth`` (``--auth``), else ``auth_file`` (``--auth-file``: its first line that is
    not blank or a ``#`` comment), else ``$MOTIA_APP_AUTH``. A ``host`` other than loopback
    needs one of them or ``no_auth`` (then a warning says the page is open); without
    either it is refused (ConfigError, one line). On loopback they are optional.
    """
    environ = os.environ if environ is None else environ
    if auth is not None and auth_file is not None:
        raise ConfigError("give the password one way: --auth or --auth-file, not both")
    if no_auth and (auth is not None or auth_file is not None):
        raise ConfigError("--no-auth serves the page without a password: drop it, or drop --auth/--auth-file")
    if auth is not None:
        credentials = parse_credentials(auth, "--auth")
    elif auth_file is not None:
        credentials = _read_auth_file(auth_file)
    elif environ.get(AUTH_ENV) and not no_auth:
        credentials = parse_credentials(environ[AUTH_ENV], f"${AUTH_ENV}")
    else:
        credentials = None
    if credentials is None and not is_loopback(host):
        if not no_auth:
            raise ConfigError(
                f"--host {host} serves the app to other machines: give it a password with --auth-file FILE (a line "
                f"USER:PASSWORD), ${AUTH_ENV}=USER:PASSWORD or --auth USER:PASSWORD, or pass --no-auth to serve it "
                "open to anyone who reaches the port"
            )
        log.warning("serving on %s without a password (--no-auth): anyone who reaches this port can run jobs on this "
                    "machine and download every output", host)  # fmt: skip
    return credentials


def launch(config: str | os.PathLike | None = None, overrides: Sequence[str] = (), host: str = "127.0.0.1",
           port: int | None = None, *, block: bool = True, auth: str | None = None,
           auth_file: str | os.PathLike | None = None, no_auth: bool = False):  # fmt: skip
    """`motia app`: serve the page on ``host:port`` (gradio's 7860 or the next free port when None).

    ``auth``, ``auth_file``, ``no_auth``: the login (``resolve_auth``), required off loopback.
    ``block=False`` returns the running ``gradio.Blocks`` (close it with ``.close()``).
    """
    credentials = resolve_auth(host, auth, auth_file, no_auth)
    require_gradio()
    app = App(config, overrides)
    page = build_ui(app)
    page.queue()
    page.launch(server_name=host, server_port=port, allowed_paths=app.allowed_paths(), prevent_thread_lock=not block,
                quiet=False, css=CSS, auth=credentials)  # fmt: skip
    return page
