"""The outpainting denoising loop (DDIM, eta 0) as plain functions around one model call.

Model contract (built by the caller from the UNet, ControlNet and text embeddings)::

    denoise(x, t, cond, window) -> eps
        x       (B, C, f, h, w) float32 latents of one temporal window; when
                cond["guided"] is True the batch is doubled: rows [:B] want the
                unconditional prediction, rows [B:] the conditional one
        t       0-d tensor, the timestep
        cond    dict: the caller's ``cond`` plus "guided" (bool), "step" (index
                of t in ``timesteps``) and "move" (running count of model moves)
        window  (start, end) frame range of x within the clip, to slice
                per-frame inputs (control video, masks)

With spatial tiles (``tiles``, ``motia.tiles``) x is one box's crop of the latents and
cond["tile"] is its (top, left, bottom, right) in latent cells, to crop per-pixel
inputs (control, LoRA insertion map); without tiles cond has no "tile" and x spans the
whole canvas, exactly as before tiles existed.

The pieces compose: ``cfg`` wraps the model call with classifier-free guidance,
``windowed`` turns per-window calls into a whole-clip prediction (``tiled`` per-box
calls, window x tile, blended per latent cell), ``ddim_step``,
``renoise`` and ``known_blend`` move the latents, and ``regret_schedule`` lays the
whole loop out as a flat list of moves between noise levels, so ``sample`` is a
short loop whose number of model calls is known in advance.

Noise levels are indices into ``timesteps``: level i is timesteps[i] (i < N) and
level N is the clean end, whose alpha is ``final_alpha_cumprod`` as in diffusers'
DDIMScheduler (alphas_cumprod[0] for SD's set_alpha_to_one=False). A step goes
from level i to level i + 1, i.e. to the next entry of ``timesteps``; for the
"leading" spacing SD uses this is exactly diffusers' t - 1000 // N.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from motia.tiles import Box, Tile, blend_boxes, boxes, check_tiling, crop, known_boxes
from motia.windows import Window, blend_windows

Denoise = Callable[[torch.Tensor, torch.Tensor, dict, Window], torch.Tensor]
Move = tuple[int, int]  # (from level, to level): forward = denoise one step, backward = re-noise
# How a step's model calls run: given the boxes and the call of one box, yield their
# predictions in the boxes' order. The default calls them one after another; a sharded
# run (several processes) calls its share and gathers the rest.
RunBoxes = Callable[[Sequence[Box], Callable[[Box], torch.Tensor]], Iterable[torch.Tensor]]


def run_in_order(run: Sequence[Box], call: Callable[[Box], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Call the boxes one after another, lazily (one box's activations alive at a time)."""
    return (call(box) for box in run)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_next: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM (eta 0) move from alphas_cumprod ``alpha`` to ``alpha_next``, in float32.

    Written in the same order of operations as diffusers' DDIMScheduler.step, but
    over explicit alphas, so it holds no scheduler state and any two levels work.
    """
    x, eps = x.float(), eps.float()
    x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
    return alpha_next**0.5 * x0 + (1 - alpha_next) ** 0.5 * eps


def renoise(x: torch.Tensor, alpha: torch.Tensor, alpha_back: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Move x from level ``alpha`` back to the noisier ``alpha_back`` <= alpha (forward diffusion q(x'|x))."""
    ratio = alpha_back / alpha
    return ratio**0.5 * x.float() + (1 - ratio) ** 0.5 * noise


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """float32 standard normal noise shaped like x, drawn on the generator's device, moved to x's."""
    if generator is None:
        raise ValueError("this sampler step draws noise: pass a torch.Generator")
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(x.device)


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask.view(1, 1, 1, *mask.shape)  # (1, 1, 1, h, w)
    if mask.ndim != 5:
        raise ValueError(f"known_mask must be (h, w) or 5-d (B, 1, F, h, w), got shape {tuple(mask.shape)}")
    return mask.to(device=like.device, dtype=torch.float32)


def known_blend(
    x: torch.Tensor,
    known_latents: torch.Tensor,
    known_mask: torch.Tensor,
    alpha: torch.Tensor | float | None,
    generator: torch.Generator | None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overwrite the known region of x (mask 1) with the source latents noised to x's level.

    ``alpha`` is alphas_cumprod at the level x has just reached, or None at the end
    of sampling: then the known region becomes the clean source latents exactly
    (no noise drawn). The noise is ``noise`` when given (the reference re-noises with
    one fixed tensor, the initial noise), else fresh from ``generator``.
    known_latents broadcast against x, (B, C, F, h, w); the mask is (h, w) or
    (B, 1, F, h, w), 1 = known, values in [0, 1].
    """
    mask = _as_mask(known_mask, x)
    source = known_latents.to(device=x.device, dtype=torch.float32)
    if alpha is not None:
        eps = randn_like(x, generator) if noise is None else noise.to(device=x.device, dtype=torch.float32)
        source = alpha**0.5 * source + (1 - alpha) ** 0.5 * eps
    # mask * source + (1 - mask) * x, not lerp: it is exact where mask == 1.
    return mask * source + (1 - mask) * x.float()


def cfg(denoise: Denoise, scale: float) -> Denoise:
    """Classifier-free guidance around a model call: eps = eps_u + scale * (eps_c - eps_u).

    When cond["guided"] is true, one model call on the doubled batch (uncond rows
    first); otherwise the conditional call alone on the plain batch.
    """

    def guided(x, t, cond, window):
        if not cond.get("guided", False):
            return denoise(x, t, cond, window)
        eps_uncond, eps_cond = denoise(torch.cat([x, x]), t, cond, window).float().chunk(2)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    return guided


def windowed(
    denoise: Denoise,
    windows: Sequence[Window] | None = None,
    weights_kind: str = "pyramid",
    run_boxes: RunBoxes = run_in_order,
) -> Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]:
    """Whole-clip eps from per-window model calls on x[:, :, s:e], blended per frame (float32).

    Only one window's activations exist at a time, so model memory depends on the
    window, not the clip. ``windows=None`` is one window over the whole clip.
    """

    def whole(x, t, cond):
        num_frames, (h, w) = x.shape[2], x.shape[-2:]
        wins = [(0, num_frames)] if windows is None else list(windows)
        run = boxes(wins, [(0, 0, h, w)])
        preds = run_boxes(run, lambda box: denoise(x[:, :, box.window[0] : box.window[1]], t, cond, box.window))
        if wins == [(0, num_frames)]:
            return next(iter(preds)).float()
        return blend_windows(preds, wins, num_frames, weights_kind)

    return whole


def tiled(
    denoise: Denoise,
    windows: Sequence[Window] | None,
    tiles: Sequence[Tile],
    weights_kind: str = "pyramid",
    tile_weights: str = "gaussian",
    skip: Callable[[Sequence[Box]], set[int]] = lambda run: set(),
    run_boxes: RunBoxes = run_in_order,
) -> Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]:
    """Whole-clip eps from per-box model calls (window x spatial tile), blended per latent cell (float32).

    Each call sees ``x`` cropped to its box and ``cond["tile"]``; the predictions are
    averaged with the product of the temporal and spatial weight profiles
    (``motia.tiles.blend_boxes``). ``skip(boxes)`` names the boxes not to call (all
    cells known: see ``motia.tiles``); it is asked once, on the first call.
    """
    skipped: set[int] | None = None

    def whole(x, t, cond):
        nonlocal skipped
        num_frames, (h, w) = x.shape[2], x.shape[-2:]
        check_tiling(tiles, h, w)
        every = boxes([(0, num_frames)] if windows is None else windows, tiles)
        if skipped is None:
            skipped = skip(every)
        run = [box for i, box in enumerate(every) if i not in skipped]
        preds = run_boxes(run, lambda box: denoise(crop(x, box), t, {**cond, "tile": box.tile}, box.window))
        return blend_boxes(preds, run, x.shape, weights_kind, tile_weights)

    return whole


def regret_schedule(num_steps: int, jump: int = 3, repeats: int = 0, fraction: float = 0.5) -> list[Move]:
    """The whole loop as (from level, to level) moves: N forward steps plus noise-regret jumps.

    Whenever the latents reach a level k that is a multiple of ``jump`` with
    k <= fraction * num_steps (and k < num_steps), they are re-noised back to
    level k - jump and denoised over those ``jump`` steps again, ``repeats`` times.
    repeats = 0 gives the plain loop [(0, 1), (1, 2), ..., (N-1, N)].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if jump < 1:
        raise ValueError(f"regret jump must be >= 1, got {jump}")
    if repeats < 0:
        raise ValueError(f"regret repeats must be >= 0, got {repeats}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"regret fraction must be in [0, 1], got {fraction}")
    last = min(int(fraction * num_steps), num_steps - 1)
    moves: list[Move] = []
    for i in range(num_steps):
        moves.append((i, i + 1))
        k = i + 1
        if k % jump == 0 and k <= last:
            for _ in range(repeats):
                moves.append((k, k - jump))
                moves.extend((j, j + 1) for j in range(k - jump, k))
    return moves


def count_model_calls(
    num_steps: int, num_windows: int = 1, *, jump: int = 3, repeats: int = 0, fraction: float = 0.5
) -> int:
    """Model calls ``sample`` makes: forward moves x boxes (``num_windows``: windows, or windows x tiles less the
    skipped ones); a guided call is one doubled-batch call."""
    moves = regret_schedule(num_steps, jump, repeats, fraction)
    return sum(dst > src for src, dst in moves) * num_windows


@torch.no_grad()
def sample(
    denoise: Denoise,
    latents: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    cond: dict | None = None,
    windows: Sequence[Window] | None = None,
    weights_kind: str = "pyramid",
    tiles: Sequence[Tile] | None = None,
    tile_weights: str = "gaussian",
    run_boxes: RunBoxes = run_in_order,
    guidance_scale: float = 1.0,
    guidance_steps: int | None = None,
    known_latents: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    known_noise: torch.Tensor | None = None,
    regret_jump: int = 3,
    regret_repeats: int = 0,
    regret_fraction: float = 0.5,
    final_alpha_cumprod: torch.Tensor | float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    observe: Callable[[dict], None] | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (B, C, F, h, w), the initial noise at timesteps[0], to clean latents.

    Guidance applies at steps whose index in ``timesteps`` is < guidance_steps
    (None: all), regret repeats included; guidance_scale 1 never doubles the batch.
    With ``known_latents`` the known region is re-imposed after every step and is
    the clean source exactly at the end; it is re-noised with ``known_noise`` (shaped
    like ``latents``) at every step when given, else with fresh noise each step.
    Updates run in float32 whatever the model's precision; the result has the
    dtype of ``latents``. Noise comes only
    from ``generator``. ``callback(i, total, latents)`` runs after each of the
    ``total`` model moves and must not modify the tensor.

    ``tiles`` (latent-cell boxes covering the canvas, ``motia.tiles.spatial_tiles``) splits
    every step's model calls into window x tile boxes blended per cell with
    ``tile_weights``; boxes whose cells are all known are not called. None, or one tile
    covering the canvas, is the untiled sampler exactly. ``run_boxes`` runs a step's calls
    (default: in order, in this process).
    """
    timesteps = torch.as_tensor(timesteps)
    num_steps = len(timesteps)
    if guidance_steps is not None and guidance_steps < 0:
        raise ValueError(f"guidance_steps must be >= 0, got {guidance_steps}")
    if (known_latents is None) != (known_mask is None):
        raise ValueError("known_latents and known_mask go together: pass both or neither")

    alphas_cumprod = torch.as_tensor(alphas_cumprod)
    final = alphas_cumprod[0] if final_alpha_cumprod is None else torch.as_tensor(final_alpha_cumprod)
    levels = torch.cat([alphas_cumprod[timesteps.cpu()], final.view(1).to(alphas_cumprod)])
    if not bool((levels[1:] >= levels[:-1]).all()):
        raise ValueError("timesteps must run from the noisiest down (as scheduler.timesteps do)")
    levels = levels.to(device=latents.device, dtype=torch.float32)  # (N + 1,) alpha per level

    moves = regret_schedule(num_steps, regret_jump, regret_repeats, regret_fraction)
    total = sum(dst > src for src, dst in moves)
    fresh_known = known_latents is not None and known_noise is None and num_steps > 1
    if generator is None and (total > num_steps or fresh_known):
        raise ValueError("noise regret and the known-region blend draw noise: pass a torch.Generator")
    if known_noise is not None and tuple(known_noise.shape) != tuple(latents.shape):
        raise ValueError(f"known_noise must be shaped like latents {tuple(latents.shape)}, got {tuple(known_noise.shape)}")
    h, w = latents.shape[-2:]
    guided_denoise = cfg(denoise, guidance_scale)
    if tiles is None or [tuple(t) for t in tiles] == [(0, 0, h, w)]:
        eps_fn = windowed(guided_denoise, windows, weights_kind, run_boxes)
    else:
        eps_fn = tiled(guided_denoise, windows, tiles, weights_kind, tile_weights,
                       skip=lambda run: known_boxes(run, known_mask), run_boxes=run_boxes)
    base = dict(cond or {})

    x = latents.float()
    if known_latents is not None:  # moved once, not every step
        known_latents = known_latents.to(device=x.device, dtype=torch.float32)
        known_mask = _as_mask(known_mask, x)
        if known_noise is not None:
            known_noise = known_noise.to(device=x.device, dtype=torch.float32)
    done = 0
    with tqdm(total=total, disable=not progress, desc="denoise", leave=False) as bar:
        for src, dst in moves:
            if dst < src:
                noise = randn_like(x, generator)
                x = renoise(x, levels[src], levels[dst], noise)
                if observe is not None:
                    observe({"kind": "renoise", "src": src, "dst": dst, "noise": noise, "x": x})
                continue
            guided = guidance_scale != 1.0 and (guidance_steps is None or src < guidance_steps)
            eps = eps_fn(x, timesteps[src], {**base, "guided": guided, "step": src, "move": done})
            x = ddim_step(x, eps, levels[src], levels[dst])
            if known_latents is not None:
                alpha = None if dst == num_steps else levels[dst]
                x = known_blend(x, known_latents, known_mask, alpha, generator, known_noise)
            if observe is not None:
                observe({"kind": "step", "src": src, "dst": dst, "move": done, "t": timesteps[src],
                         "guided": guided, "eps": eps, "x": x})
            if callback is not None:
                callback(done, total, x)
            done += 1
            bar.update()
    return x.to(latents.dtype)
