"""How outpaint(...) wires its pieces, checked in real runs on the tiny bundle against references computed another way.

Every test runs ``motia.outpaint.outpaint`` with the real denoiser (text encoder,
ControlNet, UNetMotionModel, VAE of the tiny bundle) and observes it from outside:
forward (pre-)hooks on the real modules and the sampler's ``observe`` events. The
expected values are built independently of the code under test: diffusers' own
DDIMScheduler (step, add_noise, timesteps, alphas), the control video and the known
latents assembled by hand from the source, guidance / blend / re-noise formulas
written out, layer grids derived from the UNet's block structure. Equality is exact
wherever the same float operations run in the same order; the few tolerances say why.

Sizes: 7 frames of 32x32 on a 32x48 canvas (latent 4x6, known cells in columns 1-4),
temporal windows of 4 frames with stride 2 -> windows (0, 4), (2, 6), (3, 7).
"""

import copy
import dataclasses
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from motia.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NUM_FRAMES, SRC = 7, 32
WINDOWS = [(0, 4), (2, 6), (3, 7)]  # what 7 frames in windows of 4, stride 2 must give
BASE = [  # plain unless a test turns a piece on: 2 steps, no guidance, no regret, no window attention
    "video.resize=none", "outpaint.left=0.25", "outpaint.right=0.25", "sample.steps=2",
    "sample.guidance_scale=1.0", "sample.regret.repeats=0", "sample.window.frames=4", "sample.window.stride=2",
    "sample.negative_prompt=blurry", "sample.window_attention.enabled=false",
]
# Guidance (scale 2) on step 0 and one regret repeat (level 1 back to 0): moves from levels 0, 0, 1; 2 guided.
GUIDED_REGRET = ["sample.guidance_steps=1", "sample.guidance_scale=2.0", "sample.regret.repeats=1",
                 "sample.regret.jump=1", "sample.regret.fraction=0.5"]


def make_cfg(*overrides):
    return load_config(CONFIGS / "tiny.yaml", BASE + list(overrides))


# one_thread and components: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip():
    from motia.video import Clip

    f = torch.arange(NUM_FRAMES, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.linspace(0, 3, SRC).view(1, 1, -1, 1)
    x = torch.linspace(0, 4, SRC).view(1, 1, 1, -1)
    phase = torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1)
    frames = 0.5 + 0.4 * torch.sin(x + 0.7 * y + 0.3 * f + phase)  # (F, 3, 32, 32), moving colour bands
    return Clip(frames=frames, fps=8.0, source=Path("synthetic.mp4"), frame_indices=list(range(NUM_FRAMES)))


class Trace:
    """The sampler's events of one run, with the latents each model move started from."""

    def __init__(self, initial: torch.Tensor):
        self.events: list[dict] = []
        self.before: list[torch.Tensor] = []  # per model move: the whole-clip latents it denoised
        self._last = initial

    def __call__(self, event: dict) -> None:
        if event["kind"] == "step":
            self.before.append(self._last)
        self._last = event["x"]
        self.events.append(event)

    @property
    def steps(self) -> list[dict]:
        return [e for e in self.events if e["kind"] == "step"]


@contextmanager
def hooks(*handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def record_inputs(module, calls: list, *names: str):
    """Forward pre-hook appending each call's positional args and the named keyword args (cloned)."""

    def hook(m, args, kwargs):
        entry = {"args": [a.detach().clone() if torch.is_tensor(a) else a for a in args]}
        for n in names:
            v = kwargs.get(n)
            if isinstance(v, (list, tuple)):
                v = [t.clone() for t in v]
            entry[n] = v.clone() if torch.is_tensor(v) else v
        calls.append(entry)

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def record_outputs(module, outs: list):
    return module.register_forward_hook(lambda m, args, out: outs.append(out))


def run(cfg, components, clip, trace=None, **kw):
    from motia.outpaint import outpaint

    return outpaint(cfg, components, clip, progress=False, observe=trace, **kw)


# ----------------------------------------------------------------------------- independent references


def initial_noise(cfg, components):
    """The noise a run starts from, (1, 4, F, 4, 6): the first draw of a CPU generator seeded with cfg.seed."""
    g = torch.Generator("cpu").manual_seed(cfg.seed)
    return torch.randn((1, components.unet.config.in_channels, NUM_FRAMES, 4, 6), generator=g), g


def scheduler_for(components, steps):
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(components.scheduler.config)
    s.set_timesteps(steps)
    return s


def canvas_of(cfg, clip):
    from motia.planning import plan

    canvas = plan(cfg, clip.height, clip.width)
    assert canvas.box == (0, 8, 32, 40) and (canvas.height, canvas.width) == (32, 48)  # 8-aligned: cells 1..4 known
    return canvas


def known_cells(canvas) -> torch.Tensor:
    """(h, w) bool: the latent cells whose 8x8 pixels are all source."""
    top, left, bottom, right = (v // 8 for v in canvas.box)
    mask = torch.zeros(canvas.height // 8, canvas.width // 8, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


@torch.no_grad()
def source_latents(components, clip, canvas):
    """(1, 4, F, h, w): the VAE's posterior mean of the source alone (one call) at the box's cells, zero elsewhere."""
    vae = components.vae
    z = vae.encode(clip.frames * 2 - 1).latent_dist.mean * vae.config.scaling_factor  # (F, 4, 4, 4)
    top, left, bottom, right = (v // 8 for v in canvas.box)
    out = torch.zeros(1, 4, NUM_FRAMES, canvas.height // 8, canvas.width // 8)
    out[0, :, :, top:bottom, left:right] = z.permute(1, 0, 2, 3)
    return out


def control_frames(clip, canvas) -> torch.Tensor:
    """(F, 3, H, W): the source at its box, every pixel to generate at -1 (the inpainting ControlNet's input)."""
    top, left, bottom, right = canvas.box
    out = torch.full((NUM_FRAMES, 3, canvas.height, canvas.width), -1.0)
    out[:, :, top:bottom, left:right] = clip.frames
    return out


# ----------------------------------------------------------------------------- guidance


def test_guided_eps_is_built_from_the_two_prompts_on_exactly_the_guided_steps(components, clip):
    from motia.outpaint import encode_prompt, make_denoiser

    cfg = make_cfg("sample.steps=3", "sample.guidance_scale=3.0", "sample.guidance_steps=2",
                   "sample.window.frames=8")  # one window: the sampler's eps is that call's
    noise, _ = initial_noise(cfg, components)
    trace = Trace(noise)
    unet_calls, cn_calls = [], []
    with hooks(record_inputs(components.unet, unet_calls, "encoder_hidden_states"),
               record_inputs(components.controlnet, cn_calls)):
        run(cfg, components, clip, trace)

    # Guidance on steps 0 and 1 only: the doubled batch reaches the UNet and the ControlNet (per frame) there.
    assert [c["args"][0].shape[0] for c in unet_calls] == [2, 2, 1]
    assert [c["args"][0].shape[0] for c in cn_calls] == [14, 14, 7]
    assert [e["guided"] for e in trace.steps] == [True, True, False]
    cond, uncond = encode_prompt(components, cfg.prompt, "blurry")  # (1, 77, D) each
    emb = unet_calls[0]["encoder_hidden_states"]  # (2F, 77, D): unconditional rows first
    assert torch.equal(emb[:NUM_FRAMES], uncond.expand(NUM_FRAMES, -1, -1))
    assert torch.equal(emb[NUM_FRAMES:], cond.expand(NUM_FRAMES, -1, -1))

    # The reference: each prompt's eps from its own call. Those calls run at the guided call's batch size
    # (the same prompt in both rows): the tiny random UNet's float32 rounding differs between batch sizes
    # by up to 6e-4 (it is 3e-4 off float64 anyway), while rows of one call never influence each other,
    # so the comparison can be exact.
    canvas = canvas_of(cfg, clip)
    ctl = control_frames(clip, canvas)

    def prompt_eps(text, x, t, rows):
        denoise = make_denoiser(components, (text, text), ctl)
        out = denoise(torch.cat([x] * rows), t, {"guided": rows == 2}, (0, NUM_FRAMES)).float()
        return out[:1]  # (1, 4, F, h, w)

    for event, x in zip(trace.steps, trace.before):
        rows = 2 if event["guided"] else 1
        eps_c = prompt_eps(cond, x, event["t"], rows)
        if not event["guided"]:
            assert torch.equal(event["eps"], eps_c)
            continue
        eps_u = prompt_eps(uncond, x, event["t"], rows)
        assert (eps_c - eps_u).abs().max() > 1e-2  # the prompts differ: a swap or a mix-up would show
        assert torch.equal(event["eps"], eps_u + 3.0 * (eps_c - eps_u))


# ----------------------------------------------------------------------------- noise regret


def test_regret_moves_follow_the_schedule_and_renoise_to_the_right_level(components, clip):
    from motia.sampler import regret_schedule

    cfg = make_cfg("sample.steps=6", "sample.regret.jump=2", "sample.regret.repeats=2", "sample.regret.fraction=0.5",
                   "sample.window.frames=8")
    noise, g = initial_noise(cfg, components)
    trace = Trace(noise)
    calls = []
    with hooks(record_inputs(components.unet, calls)):
        run(cfg, components, clip, trace)

    # L = 2, M = 2 in the first half of 6 steps: at level 2 (<= 3; level 4 is past it) back to 0, twice.
    cycle = [(2, 0), (0, 1), (1, 2)]
    expected = [(0, 1), (1, 2), *cycle, *cycle, (2, 3), (3, 4), (4, 5), (5, 6)]
    assert expected == regret_schedule(6, 2, 2, 0.5)
    assert [(e["src"], e["dst"]) for e in trace.events] == expected
    assert [e["kind"] for e in trace.events] == ["step" if d > s else "renoise" for s, d in expected]
    ts = scheduler_for(components, 6).timesteps  # diffusers' own: 831, 665, ..., 1
    assert [int(c["args"][1]) for c in calls] == [int(ts[s]) for s, d in expected if d > s]

    # Each re-noise: x' = sqrt(a'/a) x + sqrt(1 - a'/a) n, a = alphas_cumprod at the two levels, n the
    # generator's next draw (the initial noise was its first; fixed known noise draws nothing).
    ac = scheduler_for(components, 6).alphas_cumprod
    previous = noise
    for e in trace.events:
        if e["kind"] == "renoise":
            assert torch.equal(e["noise"], torch.randn(noise.shape, generator=g))
            ratio = ac[ts[e["dst"]]] / ac[ts[e["src"]]]
            assert torch.equal(e["x"], ratio**0.5 * previous + (1 - ratio) ** 0.5 * e["noise"])
        previous = e["x"]


def test_one_regret_cycle_equals_a_hand_written_loop(components, clip):
    """L = 3, M = 1 over 4 steps, guidance below level 2: DDIM steps by diffusers, the re-noise written out."""
    from motia.outpaint import encode_prompt, make_denoiser

    cfg = make_cfg("sample.steps=4", "sample.regret.jump=3", "sample.regret.repeats=1", "sample.regret.fraction=1.0",
                   "sample.guidance_scale=2.5", "sample.guidance_steps=2", "sample.window.frames=8")
    result = run(cfg, components, clip)

    canvas = canvas_of(cfg, clip)
    known = source_latents(components, clip, canvas)
    mask = known_cells(canvas).float()
    denoise = make_denoiser(components, encode_prompt(components, cfg.prompt, "blurry"), control_frames(clip, canvas))
    scheduler = scheduler_for(components, 4)
    ts, ac = scheduler.timesteps, scheduler.alphas_cumprod
    noise, g = initial_noise(cfg, components)

    def step(x, i):  # level i -> i + 1: one (guided below level 2) model call, diffusers' DDIM step, known blend
        if i < 2:
            u, c = denoise(torch.cat([x, x]), ts[i], {"guided": True}, (0, NUM_FRAMES)).float().chunk(2)
            eps = u + 2.5 * (c - u)
        else:
            eps = denoise(x, ts[i], {"guided": False}, (0, NUM_FRAMES)).float()
        x = scheduler.step(eps, ts[i], x).prev_sample
        source = scheduler.add_noise(known, noise, ts[i + 1 : i + 2]) if i + 1 < 4 else known
        return mask * source + (1 - mask) * x

    x = noise
    for i in range(3):
        x = step(x, i)
    ratio = ac[ts[0]] / ac[ts[3]]  # back from level 3 to level 0 with the generator's next draw
    x = ratio**0.5 * x + (1 - ratio) ** 0.5 * torch.randn(x.shape, generator=g)
    for i in range(4):
        x = step(x, i)
    assert torch.equal(result.latents, x)


# ----------------------------------------------------------------------------- LoRA, insertion map, lora_scale

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def random_lora(components, tmp_path_factory):
    """A LoRA on temporal and spatial layers (rows and tokens layouts) with random lora_B, so every delta acts."""
    from motia.lora import _adapter_parameters, add_lora, save_lora

    unet = copy.deepcopy(components.unet)
    add_lora(unet, "temporal+spatial", rank=RANK, alpha=ALPHA)
    g = torch.Generator().manual_seed(0)
    for name, p in sorted(_adapter_parameters(unet, "motia").items()):
        if ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    return save_lora(tmp_path_factory.mktemp("lora") / "random.safetensors", unet)


def level_of(name: str) -> int:
    """Downsampling level of a UNet layer from its block: down_blocks.i at i, mid_block at 3, up_blocks.i at 3 - i."""
    block, index = name.split(".")[:2]
    return 3 if block == "mid_block" else int(index) if block == "down_blocks" else 3 - int(index)


def lora_layer_check(components, canvas, k, lora_scale, seen):
    """UNet pre-hook that, on the first call, hooks every LoRA layer to check its output against
    base(x) + (B A x * map) * lora_scale (alpha / r folded into the file's B), map = the insertion map resized to the layer's grid."""
    from peft.tuners.lora import LoraLayer

    from motia.geometry import insertion_map, resize_map

    pixel_map = insertion_map(canvas, k)  # (32, 48)
    state = {"batch": None, "handles": []}

    def layer_hook(name):
        level = level_of(name)
        gh, gw = -(-4 // 2**level), -(-6 // 2**level)  # SD convs downsample with ceil
        grid = resize_map(pixel_map, gh, gw)  # (gh, gw)
        # The same grid by plain block means (integer ratios here); summation order differs, hence atol.
        blocks = pixel_map.view(gh, 32 // gh, gw, 48 // gw).mean(dim=(1, 3))
        torch.testing.assert_close(grid, blocks, rtol=0, atol=1e-6)
        temporal = ".motion_modules." in name

        def hook(layer, args, out):
            x = args[0]
            delta = F.linear(F.linear(x, layer.lora_A["motia"].weight), layer.lora_B["motia"].weight)
            if temporal:  # (B*gh*gw, F, C): space folded into the batch, rows ordered (b, y, x)
                placed = grid.reshape(1, gh * gw).expand(state["batch"], -1).reshape(-1, 1, 1)
            else:  # (B*F, gh*gw, C): row-major tokens
                placed = grid.reshape(1, gh * gw, 1)
            # motia-lora/2 files fold alpha/r into lora_B (x2 here, a power of two: exact), so the loaded
            # layer's own multiplier is lora_scale alone.
            expected = layer.base_layer(x) + (delta * placed) * lora_scale
            assert torch.equal(out, expected), name
            seen[name] = seen.get(name, 0) + 1

        return hook

    def pre(unet, args, kwargs):
        state["batch"] = args[0].shape[0]
        if not state["handles"]:
            for name, m in unet.named_modules():
                if isinstance(m, LoraLayer):
                    state["handles"].append(m.register_forward_hook(layer_hook(name)))

    handle = components.unet.register_forward_pre_hook(pre, with_kwargs=True)
    return handle, state


@pytest.mark.parametrize("k, lora_scale", [(2.0, 0.5), (0.0, 1.0)])
def test_every_lora_layer_is_scaled_by_the_resized_insertion_map(components, clip, random_lora, k, lora_scale):
    # Guided moves double the batch: the rows layout must repeat the map once per video.
    cfg = make_cfg(*GUIDED_REGRET, f"sample.insertion.k={k}", f"sample.lora_scale={lora_scale}")
    canvas = canvas_of(cfg, clip)
    seen = {}
    handle, state = lora_layer_check(components, canvas, k, lora_scale, seen)
    try:
        run(cfg, components, clip, lora_path=random_lora)
    finally:
        handle.remove()
        for h in state["handles"]:
            h.remove()
    names = [n for n, _ in components.unet.named_modules()]
    motion = [n for n in names if ".motion_modules." in n and n.endswith(".ff.net.2")]  # one per motion block
    spatial = [n for n in names if ".attentions." in n and n.endswith(".attn1")]
    assert (len(motion), len(spatial)) == (13, 10)
    assert len(seen) == 7 * len(motion) + 4 * len(spatial)  # attn1/attn2 q/k/v + ff.net.2; attn1 q/k/v/out
    assert all(n == 3 * len(WINDOWS) for n in seen.values())  # every layer in every call of the 3 moves


def test_insertion_k_changes_a_run_with_everything_else_equal(components, clip, random_lora):
    from motia.geometry import insertion_map

    k0, k2 = (run(make_cfg(*GUIDED_REGRET, f"sample.insertion.k={k}"), components, clip, lora_path=random_lora)
              for k in (0, 2))
    assert (insertion_map(canvas_of(make_cfg(), clip), 2.0) < 0.5).any()  # K = 2 does fade the border
    assert (k2.latents - k0.latents).abs().max() > 1e-3


# ----------------------------------------------------------------------------- window attention

TOP_ATTN1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def test_window_shift_at_every_call_is_the_move_index(components, clip):
    from motia.attention import WindowAttnProcessor

    # Regret (L = 1, M = 1) makes the move index differ from the step index: moves from levels 0, 0, 1, 1, 2, 3.
    cfg = make_cfg("sample.window_attention.enabled=true", "sample.steps=4", "sample.regret.jump=1",
                   "sample.regret.repeats=1", "sample.regret.fraction=0.5")
    seen = {"unet": [], "controlnet": []}

    def look(which):
        def hook(attn, args, kwargs):
            p = attn.processor
            assert isinstance(p, WindowAttnProcessor)
            seen[which].append((p.state.step, p.state.offset((4, 6))))

        return hook

    trace = Trace(None)
    unet_attn = components.unet.get_submodule(TOP_ATTN1)
    cn_attn = components.controlnet.get_submodule(TOP_ATTN1)
    with hooks(unet_attn.register_forward_pre_hook(look("unet"), with_kwargs=True),
               cn_attn.register_forward_pre_hook(look("controlnet"), with_kwargs=True)):
        run(cfg, components, clip, trace)
    assert [e["src"] for e in trace.steps] == [0, 0, 1, 1, 2, 3]
    # 2x2 windows of a 4x6 token grid are 2x3 tokens; the documented cycle of offsets, one entry per move.
    cycle = [(0, 0), (1, 1), (0, 1), (1, 0)]
    expected = [(move, cycle[move % 4]) for move in range(6) for _ in WINDOWS]  # every window of a move alike
    assert seen["unet"] == expected
    assert seen["controlnet"] == expected


ALL_SPATIAL = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
               "up_blocks.1", "up_blocks.2", "up_blocks.3"]


def test_one_by_one_window_grid_on_every_block_is_plain_attention(components, clip):
    from motia.attention import WindowAttnProcessor

    plain = run(make_cfg(*GUIDED_REGRET), components, clip)
    blocks = "[" + ",".join(ALL_SPATIAL) + "]"
    cfg = make_cfg(*GUIDED_REGRET, "sample.window_attention.enabled=true", "sample.window_attention.grid=[1,1]",
                   f"sample.window_attention.blocks={blocks}")
    windowed = {"unet": set(), "controlnet": set()}

    def look(which):
        def hook(model, args, kwargs):
            windowed[which] |= {k for k, p in model.attn_processors.items() if isinstance(p, WindowAttnProcessor)}

        return hook

    with hooks(components.unet.register_forward_pre_hook(look("unet"), with_kwargs=True),
               components.controlnet.register_forward_pre_hook(look("controlnet"), with_kwargs=True)):
        out = run(cfg, components, clip)
    spatial = {k for k in components.unet.attn_processors if ".attentions." in k and k.endswith("attn1.processor")}
    cn_spatial = {k for k in components.controlnet.attn_processors if k.endswith("attn1.processor")}
    assert windowed["unet"] == spatial and len(spatial) == 10  # every spatial self-attention, no temporal one
    assert windowed["controlnet"] == cn_spatial and len(cn_spatial) == 4
    assert torch.equal(out.latents, plain.latents)


# ----------------------------------------------------------------------------- temporal windows


def test_each_window_call_sees_its_frames_of_the_latents_and_the_control_video(components, clip):
    from motia.planning import work_estimate
    from motia.windows import temporal_windows

    cfg = make_cfg(*GUIDED_REGRET)  # 3 moves (2 guided) x 3 windows
    assert temporal_windows(NUM_FRAMES, 4, 2) == WINDOWS
    noise, _ = initial_noise(cfg, components)
    trace = Trace(noise)
    unet_calls, cn_calls = [], []
    with hooks(record_inputs(components.unet, unet_calls),
               record_inputs(components.controlnet, cn_calls, "controlnet_cond")):
        result = run(cfg, components, clip, trace)

    canvas = canvas_of(cfg, clip)
    ctl = control_frames(clip, canvas)
    assert len(trace.steps) == 3 and len(unet_calls) == len(cn_calls) == 3 * len(WINDOWS)
    for i, (unet_call, cn_call) in enumerate(zip(unet_calls, cn_calls)):
        move, (s, e) = trace.steps[i // len(WINDOWS)], WINDOWS[i % len(WINDOWS)]
        x = trace.before[i // len(WINDOWS)][:, :, s:e]  # (1, 4, f, h, w): the window's frames of the latents
        rows = 2 if move["guided"] else 1
        assert torch.equal(unet_call["args"][0], torch.cat([x] * rows))
        assert torch.equal(cn_call["args"][0], torch.cat([x] * rows).permute(0, 2, 1, 3, 4).reshape(-1, 4, 4, 6))
        assert torch.equal(cn_call["controlnet_cond"], ctl[s:e].repeat(rows, 1, 1, 1))
    # The estimate printed before the run and written to summary.json agrees with what ran.
    work = work_estimate(cfg, NUM_FRAMES, canvas)
    assert result.work == work
    assert work["unet_calls"] == len(unet_calls)
    assert work["guided_calls"] == sum(c["args"][0].shape[0] == 2 for c in unet_calls)
    assert work["unet_frames"] == sum(c["args"][0].shape[0] for c in cn_calls)


@pytest.mark.parametrize("kind, weights", [("pyramid", [1.0, 2.0, 2.0, 1.0]), ("flat", [1.0, 1.0, 1.0, 1.0])])
def test_blend_weights_reach_the_blend(components, clip, kind, weights):
    cfg = make_cfg("sample.steps=1", f"sample.window.weights={kind}")
    trace = Trace(None)
    outs = []
    with hooks(record_outputs(components.unet, outs)):
        run(cfg, components, clip, trace)
    preds = [o[0].float() for o in outs]  # (1, 4, 4, h, w) per window
    # Frame 3 lies in all three windows, and each window predicts it differently: the weights matter.
    assert (preds[0][:, :, 3] - preds[1][:, :, 1]).abs().max() > 1e-3
    assert (preds[1][:, :, 1] - preds[2][:, :, 0]).abs().max() > 1e-3
    total = torch.zeros(1, 4, NUM_FRAMES, 4, 6)
    weight_sum = torch.zeros(NUM_FRAMES)
    w = torch.tensor(weights)
    for (s, e), pred in zip(WINDOWS, preds):
        total[:, :, s:e] += pred * w.view(1, 1, -1, 1, 1)
        weight_sum[s:e] += w
    assert torch.equal(trace.steps[0]["eps"], total / weight_sum.view(1, 1, -1, 1, 1))


# ----------------------------------------------------------------------------- known region


def test_known_cells_follow_the_source_and_generated_cells_move_in_every_frame(components, clip):
    cfg = make_cfg(*GUIDED_REGRET, "sample.steps=3")
    noise, _ = initial_noise(cfg, components)
    trace = Trace(noise)
    result = run(cfg, components, clip, trace)

    canvas = canvas_of(cfg, clip)
    known = source_latents(components, clip, canvas)
    cells = known_cells(canvas)
    scheduler = scheduler_for(components, 3)
    assert [e["dst"] for e in trace.steps] == [1, 1, 2, 3]
    for e in trace.steps:
        x = e["x"]
        # Known cells: the source latents at the level just reached, noised with the initial noise ("fixed");
        # the clean source at the end.
        t = scheduler.timesteps[e["dst"] : e["dst"] + 1]
        level = scheduler.add_noise(known, noise, t) if e["dst"] < 3 else known
        assert torch.equal(x[..., cells], level[..., cells])
        # Generated cells: away from the initial noise in every frame.
        moved = (x - noise)[..., ~cells].abs().amax(dim=(0, 1, 3))  # (F,)
        assert moved.min() > 0.05, (e["dst"], moved)
    assert torch.equal(result.latents, trace.events[-1]["x"])

    # "fresh" re-noises the known cells with new draws at every step: not the initial noise, same end.
    fresh = Trace(noise)
    run(make_cfg(*GUIDED_REGRET, "sample.steps=3", "sample.known_noise=fresh"), components, clip, fresh)
    for e in fresh.steps[:-1]:
        level = scheduler.add_noise(known, noise, scheduler.timesteps[e["dst"] : e["dst"] + 1])
        assert (e["x"][..., cells] - level[..., cells]).abs().max() > 0.1
    assert torch.equal(fresh.steps[-1]["x"][..., cells], known[..., cells])


# ----------------------------------------------------------------------------- ControlNet


def test_controlnet_scale_reaches_the_residuals_and_zero_skips_the_controlnet(components, clip):
    def traced(scale):
        cfg = make_cfg("sample.steps=1", "sample.guidance_steps=1", "sample.guidance_scale=2.0",
                       f"sample.controlnet_scale={scale}")
        unet_calls, cn_calls, cn_outs = [], [], []
        with hooks(record_inputs(components.unet, unet_calls, "down_block_additional_residuals",
                                 "mid_block_additional_residual"),
                   record_inputs(components.controlnet, cn_calls, "conditioning_scale"),
                   record_outputs(components.controlnet, cn_outs)):
            result = run(cfg, components, clip)
        return result, unet_calls, cn_calls, cn_outs

    full, _, cn_full, out_full = traced(1.0)
    half, unet_half, cn_half, out_half = traced(0.5)
    assert len(cn_full) == len(cn_half) == len(WINDOWS)
    assert [c["conditioning_scale"] for c in cn_half] == [0.5] * len(WINDOWS)
    for unet_call, (down, mid) in zip(unet_half, out_half):  # the UNet gets exactly what the ControlNet returned
        assert len(unet_call["down_block_additional_residuals"]) == len(down)
        assert all(torch.equal(a, b) for a, b in zip(unet_call["down_block_additional_residuals"], down))
        assert torch.equal(unet_call["mid_block_additional_residual"], mid)
    # The first call sees the same inputs in both runs; diffusers multiplies every residual by the
    # scale, and halving is exact in binary floating point.
    (down_1, mid_1), (down_h, mid_h) = out_full[0], out_half[0]
    assert all(torch.equal(h, 0.5 * f) for h, f in zip(down_h, down_1)) and torch.equal(mid_h, 0.5 * mid_1)
    assert mid_1.abs().max() > 1e-3

    off, unet_off, cn_off, _ = traced(0.0)
    assert cn_off == []  # scale 0: the ControlNet never runs
    assert len(unet_off) == len(WINDOWS)
    assert all(c["down_block_additional_residuals"] is None and c["mid_block_additional_residual"] is None
               for c in unet_off)
    assert (off.latents - full.latents).abs().max() > 1e-3
    assert (half.latents - full.latents).abs().max() > 1e-4


# ----------------------------------------------------------------------------- a trained adapter


def test_a_trained_adapter_changes_the_result_and_reloads_identically(components, clip, tmp_path):
    from peft.tuners.lora import LoraLayer

    from motia.adapt import adapt

    cfg = make_cfg(*GUIDED_REGRET, "adapt.steps=4", "adapt.frames=4", "adapt.checkpoint_every=1000")
    trainee = dataclasses.replace(components, unet=copy.deepcopy(components.unet))
    path = adapt(cfg, trainee, clip, tmp_path / "adapter", progress=False)

    layers = []
    look = components.unet.register_forward_pre_hook(
        lambda m, args: layers.append(sum(isinstance(x, LoraLayer) for x in m.modules())))
    with hooks(look):
        plain = run(cfg, components, clip)
        assert set(layers) == {0}
        first = run(cfg, components, clip, lora_path=path)
        calls = 3 * len(WINDOWS)
        assert len(layers) == 2 * calls and set(layers[calls:]) == {13 * 7}  # the trained layers were on in the run
        second = run(cfg, components, clip, lora_path=path)
    assert torch.equal(second.latents, first.latents) and torch.equal(second.frames, first.frames)
    assert (first.latents - plain.latents).abs().max() > 1e-4
    assert not any(isinstance(m, LoraLayer) for m in components.unet.modules())  # gone after each run
