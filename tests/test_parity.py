"""Method parity with the reference and stock diffusers, where tiny random weights cannot tell right from wrong.

The oracles are independent of motia's code: the AnimateDiff schedule written out from
its published kwargs, stock ``DDIMScheduler`` / ``DDPMScheduler``, and diffusers'
``AnimateDiffControlNetPipeline`` run on the same models, latents, text and control video.
"""

import json
from contextlib import ExitStack

import pytest
import torch
import torch.nn.functional as F

from motia.config import load_config
from motia.job import REPO_CONFIGS

TINY = REPO_CONFIGS / "tiny.yaml"
# AnimateDiff's inference noise_scheduler_kwargs (and the reference's configs/base.yaml), nothing else:
# stock DDIMScheduler defaults fill in the rest (set_alpha_to_one=True, "leading" spacing).
ANIMATEDIFF_KWARGS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)


def linear_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


# one_thread and components: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from motia.video import write_video

    f = torch.arange(6, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.linspace(0, 3, 32).view(1, 1, -1, 1)
    x = torch.linspace(0, 4, 32).view(1, 1, 1, -1)
    frames = 0.5 + 0.4 * torch.sin(x + 0.7 * y + 0.3 * f + torch.tensor([0.0, 2.0, 4.0]).view(1, 3, 1, 1))
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8)


def job(clip_file, *overrides):
    return load_config(TINY, [f"video.path={clip_file}", "video.resize=none", "outpaint.left=0.25",
                              "outpaint.right=0.25", "sample.regret.repeats=0", *overrides])


# ----------------------------------------------------------------------------- the schedule


def test_components_carry_animatediffs_linear_schedule(components, tiny_bundle):
    from motia.models import load_components

    # The bundle's scheduler config is SD1.5's scaled_linear; the default ignores it.
    on_disk = json.loads((tiny_bundle / "sd" / "scheduler" / "scheduler_config.json").read_text())
    assert on_disk["beta_schedule"] == "scaled_linear"
    s = components.scheduler
    torch.testing.assert_close(s.alphas_cumprod, linear_alphas_cumprod(), rtol=0, atol=1e-7)
    assert abs(float(s.alphas_cumprod[481]) - 0.1814) < 5e-4
    probe = type(s).from_config(s.config)
    probe.set_timesteps(25)
    assert probe.timesteps.tolist() == list(range(961, 0, -40))  # 961, 921, ..., 1
    assert s.config.clip_sample is False and s.config.steps_offset == 1
    assert components.schedule == "animatediff"
    # The base's own schedule stays available.
    base = load_components(base="tiny:sd", schedule="base", parts=("scheduler",)).scheduler
    assert base.config.beta_schedule == "scaled_linear" and abs(float(base.alphas_cumprod[481]) - 0.3023) < 5e-4
    if (tiny_bundle / "sd_single.safetensors").exists():  # a single-file base: the same two choices
        single = dict(base="tiny:sd_single", base_config="tiny:sd", parts=("scheduler",))
        assert load_components(**single).scheduler.config.beta_schedule == "linear"
        assert load_components(**single, schedule="base").scheduler.config.beta_schedule == "scaled_linear"


def test_outpainting_samples_on_the_schedule_with_the_initial_noise(clip_file, components, monkeypatch):
    import motia.sampler
    from motia.outpaint import outpaint
    from motia.planning import load_clip

    seen = {}
    real = motia.sampler.sample

    def spy(denoise, latents, timesteps, alphas_cumprod, **kw):  # records, then runs the real sampler
        seen.update(latents=latents.clone(), timesteps=torch.as_tensor(timesteps).tolist(),
                    alphas=torch.as_tensor(alphas_cumprod).clone(), **kw)
        return real(denoise, latents, timesteps, alphas_cumprod, **kw)

    monkeypatch.setattr(motia.sampler, "sample", spy)
    cfg = job(clip_file, "video.max_frames=1", "sample.steps=25", "sample.guidance_scale=1.0")
    outpaint(cfg, components, load_clip(cfg), progress=False)
    torch.testing.assert_close(seen["alphas"], linear_alphas_cumprod(), rtol=0, atol=1e-7)
    assert seen["timesteps"] == list(range(961, 0, -40))
    assert float(seen["final_alpha_cumprod"]) == 1.0  # set_alpha_to_one, as AnimateDiff's DDIM
    assert torch.equal(seen["known_noise"], seen["latents"])  # sample.known_noise: fixed (the default)


def test_one_adaptation_step_loss_is_ddpm_add_noise_on_the_linear_schedule(clip_file, components, tmp_path):
    import copy
    import dataclasses

    from diffusers import DDPMScheduler

    from motia import adapt as A
    from motia.lora import lora_disabled, read_lora_metadata
    from motia.planning import load_clip

    cfg = job(clip_file, "adapt.steps=1", "adapt.frames=4", "adapt.checkpoint_every=1000", f"output.dir={tmp_path}")
    comps = dataclasses.replace(components, unet=copy.deepcopy(components.unet))
    losses = []
    path = A.adapt(cfg, comps, load_clip(cfg), tmp_path / "adapter", progress=False,
                   callback=lambda d: losses.append(d["loss"]))

    # The first step's draws again (same seed, same order), from adapt's own cached latents.
    latents = torch.load(tmp_path / "adapter" / A.LATENTS_FILE, weights_only=True)["latents"]  # (F, 4, h, w)
    frames = A.crop_to_multiple(load_clip(cfg).frames, 8)
    batch = A.training_batch(
        latents, frames, window=4, batch_size=1, num_train_timesteps=1000, generator=torch.Generator().manual_seed(cfg.seed),
        mask_ranges={side: tuple(r) for side, r in cfg.adapt.mask.model_dump().items()},
    )
    text = A.encode_prompt(components.tokenizer, components.text_encoder, cfg.prompt, "cpu")  # (1, 77, D)

    def independent_loss(ddpm):  # the loss written out on the same weights, LoRA off (lora_B was 0 at step 1)
        x0, noise, t = batch["latents"], batch["noise"], batch["t"]
        _, c, f, h, w = x0.shape
        noisy = ddpm.add_noise(x0, noise, t)  # (1, 4, f, h, w)
        text_f = text.repeat_interleave(f, dim=0)  # (f, 77, D)
        # The same UNet object adaptation ran: a copy gives other float rounding (BLAS picks kernels by
        # memory alignment), which the tiny random UNet amplifies to ~1e-4 of the loss.
        with torch.no_grad(), lora_disabled(comps.unet) as unet:
            down, mid = components.controlnet(noisy[0].permute(1, 0, 2, 3), t.repeat(f), encoder_hidden_states=text_f,
                                              controlnet_cond=batch["control"], return_dict=False)
            pred = unet(noisy, t, encoder_hidden_states=text_f, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        return F.mse_loss(pred, noise).item()

    expected = independent_loss(DDPMScheduler(**ANIMATEDIFF_KWARGS))
    assert abs(losses[0] - expected) < 1e-6  # float noise at most (0 here) ...
    # ... while SD1.5's scaled_linear schedule moves it by ~5e-3 even on tiny random weights.
    scaled = independent_loss(DDPMScheduler(**{**ANIMATEDIFF_KWARGS, "beta_schedule": "scaled_linear"}))
    assert abs(losses[0] - scaled) > 1e-3
    assert read_lora_metadata(path)["schedule"] == "animatediff"  # recorded for mismatch checks


# ----------------------------------------------------------------------------- known latents


def test_known_latents_of_an_unaligned_box_come_from_the_edge_padded_source(components):
    from motia.geometry import Canvas, latent_known_mask, pad_to_grid, place_on_canvas
    from motia.outpaint import encode_frames, encode_known

    canvas = Canvas(src_h=30, src_w=29, height=40, width=48, top=5, left=10)  # box (5, 10, 35, 39), grid (0, 8, 40, 40)
    source = torch.rand(3, 3, 30, 29, generator=torch.Generator().manual_seed(0))
    known = encode_known(components.vae, source, canvas, 2)  # (F, 4, 5, 6)
    expected = encode_frames(components.vae, pad_to_grid(source, canvas), 2)  # (F, 4, 5, 4)
    assert known.shape == (3, 4, 5, 6)
    assert torch.equal(known[:, :, :, 1:5], expected)
    assert not known[:, :, :, [0, 5]].any()  # cells the source does not touch
    # The source pasted on a gray canvas gives other latents in the fully known cells: the fill leaks in.
    mask = latent_known_mask(canvas).bool()
    gray = encode_frames(components.vae, place_on_canvas(source, canvas, 0.5), 2)
    assert mask.any() and (gray[..., mask] - known[..., mask]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- stock diffusers


def test_sampler_matches_stock_animatediff_controlnet_pipeline(components):
    """Regret off, guidance every step, no known blend, no LoRA, one window: the same latents as diffusers."""
    from diffusers import AnimateDiffControlNetPipeline, DDIMScheduler

    from motia.geometry import Canvas, control_video, known_mask, place_on_canvas
    from motia.outpaint import encode_prompt, make_denoiser
    from motia.sampler import sample

    g = torch.Generator().manual_seed(0)
    num_frames, steps, scale = 4, 4, 7.5
    canvas = Canvas(src_h=32, src_w=32, height=32, width=48, top=0, left=8)
    source = torch.rand(num_frames, 3, 32, 32, generator=g)
    control = control_video(place_on_canvas(source, canvas, 0.0), known_mask(canvas))  # (F, 3, H, W), -1 = generate
    noise = torch.randn(1, 4, num_frames, 4, 6, generator=g)  # (B, C, F, h, w)
    cond, uncond = encode_prompt(components, "a sunny beach", "")  # (1, 77, D) each

    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    scheduler.set_timesteps(steps)
    ours = sample(make_denoiser(components, (cond, uncond), control), noise, scheduler.timesteps,
                  scheduler.alphas_cumprod, guidance_scale=scale, guidance_steps=None,
                  final_alpha_cumprod=scheduler.final_alpha_cumprod)

    pipe = AnimateDiffControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, motion_adapter=None, controlnet=components.controlnet,
        scheduler=DDIMScheduler(**ANIMATEDIFF_KWARGS),
    )
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(
        prompt_embeds=cond, negative_prompt_embeds=uncond, num_frames=num_frames, height=32, width=48,
        num_inference_steps=steps, guidance_scale=scale, latents=noise.clone(),
        conditioning_frames=list(control),  # F frames (3, H, W) in [0, 1], -1 where pixels are generated
        controlnet_conditioning_scale=1.0, output_type="latent",
    ).frames  # (1, 4, F, h, w)
    assert stock.shape == ours.shape
    assert (ours - stock).abs().max() < 1e-4
    assert (ours - noise).abs().max() > 0.1  # it did denoise


# ----------------------------------------------------------------------------- defaults and old files


def test_window_attention_auto_is_off_at_the_papers_canvas(components):
    from motia.geometry import Canvas
    from motia.outpaint import _window_attention
    from motia.planning import plan_tiles

    cfg = load_config(REPO_CONFIGS / "base.yaml")
    assert cfg.sample.window_attention.enabled == "auto"
    for width, on in ((1024, False), (1536, True)):
        canvas = Canvas(512, 512, 512, width, 0, (width - 512) // 2)
        assert plan_tiles(cfg, canvas) == [(0, 0, 64, width // 8)]  # the paper's canvases are not tiled
        with ExitStack() as stack:
            handles = _window_attention(cfg, components, (512, width), stack)
            assert bool(handles) is on, width
    fast = load_config(REPO_CONFIGS / "fast.yaml")
    assert fast.sample.window_attention.enabled is True and fast.models == cfg.models
    with ExitStack() as stack:
        assert _window_attention(fast, components, (512, 1024), stack)


def test_adapter_with_the_previous_targets_loads_and_outpaints(clip_file, components, tmp_path):
    from motia.lora import _adapter_parameters, add_lora, read_lora_metadata, remove_lora, save_lora
    from motia.outpaint import outpaint
    from motia.planning import load_clip

    # motia 0.1's "temporal": ff.net.0.proj trained too, peft's default init; written as those files were.
    old = [r".*motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.to_[qkv]",
           r".*motion_modules\.\d+\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)"]
    unet = components.unet
    add_lora(unet, old, rank=4, alpha=32, init_lora_weights=True)
    g = torch.Generator().manual_seed(0)
    for name, p in sorted(_adapter_parameters(unet, "motia").items()):
        if ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    path = save_lora(tmp_path / "old.safetensors", unet, {"source_clip": "c.mp4"})  # no `schedule` key then
    remove_lora(unet)
    assert any(t.endswith("ff.net.0.proj") for t in read_lora_metadata(path)["targets"])

    cfg = job(clip_file, "video.max_frames=3", "sample.steps=2", "sample.guidance_scale=1.0")
    clip = load_clip(cfg)
    plain = outpaint(cfg, components, clip, progress=False)
    adapted = outpaint(cfg, components, clip, lora_path=path, progress=False)
    assert torch.isfinite(adapted.frames).all()
    assert (adapted.frames - plain.frames).abs().max() > 1e-3  # its layers, ff.net.0.proj included, act
    assert not getattr(unet, "peft_config", None)  # and are removed afterwards
