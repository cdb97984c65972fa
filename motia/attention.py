"""Window self-attention (HiDiffusion's MSW-MSA) for the high-resolution UNet blocks, without wrap-around.

At large canvases the spatial self-attention of SD1.5's top blocks (down_blocks.0,
up_blocks.3: 1/8 of the canvas, e.g. 128x128 = 16384 tokens at 1024 px) dominates
the cost. Here each token attends only to the tokens of its window: a (gh, gw) grid
(default 2x2) of windows of ``ceil(H/gh) x ceil(W/gw)`` tokens, so attention work in
those blocks drops about gh*gw times.

Shifting. Window boundaries move between denoising steps so information crosses
them over the run. The offset (dy, dx) for step ``i`` is deterministic (``motia.outpaint``
counts model moves: every denoising step, noise-regret repeats included)::

    [(0, 0), (wh // 2, ww // 2), (0, ww // 2), (wh // 2, 0)][i % 4]

with (wh, ww) the window size in tokens; an axis with a single window (g == 1)
never shifts, so grid 1x1 is exactly full attention. HiDiffusion rolls the feature
map cyclically, which lets the left and right canvas edges (exactly the new,
outpainted regions) attend to each other. Here a shift only moves the boundaries:
the windows cut at the borders are smaller ("partial") windows, tokens never wrap.

Exactness. Windows are rectangles of real tokens; each is attended on its own, and
windows of equal shape are batched into one SDPA call. q/k/v are put in window order
once, so a group is a view (or one copy of it) and memory stays near plain attention's.
Sizes that do not split evenly (13x21 tokens, odd latents) give smaller border windows: no padding, no
masks, no resizing of features. This computes the same thing as padding the grid
to a multiple of the window and masking the padded keys, with no wasted work on
padding and no (L x L) mask tensors (a 64x64-token window would need one of 16M
entries per window shape).

Plug-in points only: one ``WindowAttnProcessor`` (the call signature of diffusers'
``AttnProcessor2_0``; LoRA layers on to_q/to_k/to_v work because it calls them the
same way) is set with ``set_attn_processor`` on the chosen attn1 modules; the
previous processors dict is saved and restored by ``WindowAttention.remove()``.
The token grid (H, W) of the (B, H*W, C) hidden states comes from a small shared
``WindowState``: a forward pre-hook on the model records the latent size of each
call, and the processor finds the downsampling level k with
``ceil(h / 2**k) * ceil(w / 2**k) == N`` (SD convs downsample with ceil).

Auto rule (``should_enable``): "auto" turns window attention on only when the canvas's
long side is above 1024 px (more than 128 tokens in the top blocks). The paper's own
setting, 512x512 -> 512x1024, thus runs full attention, as the reference does; up to
there full attention in those blocks is affordable, and 2x2 windows would be at most
64 tokens (512 px) across, small next to the scene's objects. ``configs/fast.yaml``
turns it on for every canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from .errors import ConfigError

DEFAULT_BLOCKS = ("down_blocks.0", "up_blocks.3")
MAX_DOWNSAMPLING = 8  # levels searched when matching a token count to the latent size


def shift_offsets(window: tuple[int, int]) -> list[tuple[int, int]]:
    """The documented per-step offset cycle for a window of (wh, ww) tokens: step i uses entry i % 4."""
    wh, ww = window
    return [(0, 0), (wh // 2, ww // 2), (0, ww // 2), (wh // 2, 0)]


def should_enable(cfg_enabled: bool | str, canvas_h: int, canvas_w: int, threshold: int = 1024) -> bool:
    """Resolve the config value: True/False as given; "auto" is on when max(canvas_h, canvas_w) > threshold px."""
    if cfg_enabled == "auto":
        return max(int(canvas_h), int(canvas_w)) > threshold
    if isinstance(cfg_enabled, bool):
        return cfg_enabled
    raise ConfigError(f"window attention: enabled must be true, false or \"auto\", got {cfg_enabled!r}")


@dataclass
class WindowState:
    """What the processors share: window grid, shift switch, current step, latent size of the running call."""

    grid: tuple[int, int] = (2, 2)
    shift: bool = True
    step: int = 0
    latent_hw: tuple[int, int] | None = None  # set by the model's forward pre-hook

    def token_grid(self, n_tokens: int) -> tuple[int, int]:
        """(H, W) of a row-major token sequence of length n_tokens at some downsampling of the latent."""
        if self.latent_hw is None:
            raise RuntimeError(
                "window attention: latent size unknown; install with install_window_attention(model) "
                "(its pre-hook records the input size) or set WindowState.latent_hw"
            )
        h, w = self.latent_hw
        for k in range(MAX_DOWNSAMPLING + 1):
            hk, wk = -(-h // 2**k), -(-w // 2**k)  # SD convs downsample with ceil
            if hk * wk == n_tokens:
                return hk, wk
            if hk * wk < n_tokens:
                break  # the product strictly decreases with k until 1x1: no later match
        raise RuntimeError(
            f"window attention: {n_tokens} tokens match no ceil(h/2^k) x ceil(w/2^k) grid of the "
            f"{h}x{w} latent; the blocks given do not downsample like SD1.5"
        )

    def offset(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Boundary offset (dy, dx) in tokens for a token grid hw at the current step (axes with one window never shift)."""
        if not self.shift:
            return 0, 0
        (h, w), (gh, gw) = hw, self.grid
        dy, dx = shift_offsets((-(-h // gh), -(-w // gw)))[self.step % 4]
        return (dy if gh > 1 else 0), (dx if gw > 1 else 0)


def _segments(n: int, size: int, offset: int) -> list[tuple[int, int]]:
    """Cut [0, n) at offset + k*size: a partial window [0, offset) first when shifted, a partial last one if short."""
    starts = list(range(offset, n, size))
    if offset > 0:
        starts = [0] + starts
    return list(zip(starts, starts[1:] + [n]))


@dataclass
class _Plan:
    """Token order for one (H, W, grid, offset): windows grouped by shape, each window's tokens contiguous.

    ``order`` lists the flat token indices group by group (``groups`` gives each group's
    window count and window length); ``inverse`` maps back to row-major order.
    """

    groups: list[tuple[int, int]]  # (count, length) per group, in ``order``
    order: torch.Tensor
    inverse: torch.Tensor
    identity: bool = False  # one window covering the whole grid in order


def _make_plan(hw: tuple[int, int], grid: tuple[int, int], offset: tuple[int, int], device) -> _Plan:
    (h, w), (gh, gw), (dy, dx) = hw, grid, offset
    ys = _segments(h, -(-h // gh), dy)
    xs = _segments(w, -(-w // gw), dx)
    if len(ys) == 1 and len(xs) == 1:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return _Plan(groups=[], order=empty, inverse=empty, identity=True)
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
    for y0, y1 in ys:
        for x0, x1 in xs:
            rows = torch.arange(y0, y1)[:, None] * w
            cols = torch.arange(x0, x1)[None, :]
            by_shape.setdefault((y1 - y0, x1 - x0), []).append((rows + cols).flatten())
    groups = [(len(windows), windows[0].numel()) for windows in by_shape.values()]
    order = torch.cat([idx for windows in by_shape.values() for idx in windows])
    inverse = torch.empty(h * w, dtype=torch.long)
    inverse[order] = torch.arange(h * w)
    return _Plan(groups=groups, order=order.to(device), inverse=inverse.to(device))


def _window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, plan: _Plan) -> torch.Tensor:
    """SDPA within the plan's windows of (B, N, heads*d) projections already in ``plan.order``.

    Returns (B, N, heads*d) in window order. Each group's windows are contiguous in
    that order, so its q/k/v are views (one group) or one copy of the group (several);
    the results are written into one preallocated tensor. Memory stays that of plain
    attention plus at most one group's q/k/v.
    """
    b, n, inner = q.shape
    d = inner // heads
    if plan.identity:
        split = lambda t: t.view(b, n, heads, d).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, inner)
    out = torch.empty_like(q)
    start = 0
    for count, length in plan.groups:
        end = start + count * length

        def window(t):  # (B, N, inner) -> (B*count, heads, L, d)
            return t[:, start:end].reshape(b * count, length, heads, d).transpose(1, 2)

        o = F.scaled_dot_product_attention(window(q), window(k), window(v))  # (B*count, heads, L, d)
        out[:, start:end].view(b, count, length, heads, d).copy_(o.view(b, count, heads, length, d).transpose(2, 3))
        del o
        start = end
    return out


class WindowAttnProcessor:
    """Drop-in for ``AttnProcessor2_0`` that restricts self-attention to (shifted) windows.

    Cross-attention (encoder_hidden_states given) and calls with an attention mask
    are passed to plain ``AttnProcessor2_0`` unchanged. Only the SDPA call differs
    from ``AttnProcessor2_0``: projections, norms, output projection, residual and
    rescaling follow it line for line (including using SDPA's default scale).
    """

    def __init__(self, state: WindowState):
        self.state = state
        self._plain = AttnProcessor2_0()
        self._plans: dict[tuple, _Plan] = {}

    def plan(self, hw: tuple[int, int], device) -> _Plan:
        offset = self.state.offset(hw)
        key = (hw, tuple(self.state.grid), offset, str(device))
        if key not in self._plans:
            if len(self._plans) > 64:  # canvases change rarely; keep the cache bounded anyway
                self._plans.clear()
            self._plans[key] = _make_plan(hw, tuple(self.state.grid), offset, device)
        return self._plans[key]

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            hw = (height, width)
        else:
            hw = self.state.token_grid(hidden_states.shape[1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        plan = self.plan(hw, hidden_states.device)
        # Each projection is put in window order as soon as it exists (the row-major copy is
        # dropped right away); the projections themselves see row-major tokens, as LoRA
        # layers and their spatial scale maps expect.
        reorder = (lambda t: t) if plan.identity else (lambda t: t.index_select(1, plan.order))  # noqa: E731
        query = reorder(attn.to_q(hidden_states))
        key = reorder(attn.to_k(hidden_states))
        value = reorder(attn.to_v(hidden_states))
        b, n, inner = key.shape
        if attn.norm_q is not None or attn.norm_k is not None:
            # per-head norms act on the last (head_dim) axis of each token: order does not matter
            head_dim = inner // attn.heads
            if attn.norm_q is not None:
                query = attn.norm_q(query.view(b, n, attn.heads, head_dim)).reshape(b, n, inner)
            if attn.norm_k is not None:
                key = attn.norm_k(key.view(b, n, attn.heads, head_dim)).reshape(b, n, inner)

        dtype = query.dtype
        hidden_states = _window_sdpa(query, key, value, attn.heads, plan)
        del query, key, value
        if not plan.identity:
            hidden_states = hidden_states.index_select(1, plan.inverse)  # back to row-major for to_out
        hidden_states = hidden_states.to(dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def spatial_self_attention_names(model: torch.nn.Module, blocks) -> list[str]:
    """Processor keys (``...attn1.processor``) of spatial self-attention under the given block prefixes.

    Spatial means inside ``attentions.`` (Transformer2DModel); AnimateDiff's
    ``motion_modules.`` attention is temporal and never windowed. Raises ConfigError
    for a prefix that matches nothing.
    """
    if isinstance(blocks, str):
        blocks = (blocks,)
    keys = list(model.attn_processors)
    spatial = [k for k in keys if ".attentions." in k and k.endswith(".attn1.processor")]
    names = []
    for prefix in blocks:
        hit = [k for k in spatial if k.startswith(prefix.rstrip(".") + ".")]
        if not hit:
            choices = sorted({k.split(".attentions.")[0] for k in spatial})
            raise ConfigError(
                f"window attention: block {prefix!r} has no spatial self-attention in "
                f"{type(model).__name__}; choose from {', '.join(choices)}"
            )
        names += [k for k in hit if k not in names]
    return names


@dataclass
class WindowAttention:
    """Handle of installed window attention: ``set_step(i)`` per denoising step, ``remove()`` to undo.

    Covers the model and, if one was passed, its ControlNet (one shared state: each
    model's pre-hook records the latent size right before its own forward). Also a
    context manager (removes on exit).
    """

    state: WindowState
    names: list[str]  # processor keys windowed in the model
    controlnet_names: list[str]  # ... and in the ControlNet (empty without one)
    _installs: list = field(repr=False)  # (model, saved processors dict, hook handle)
    _removed: bool = False

    def set_step(self, i: int) -> None:
        """Select the shift for denoising step i (see the module docstring for the cycle)."""
        self.state.step = int(i)

    def remove(self) -> None:
        """Restore the saved processors (the same objects) and remove the pre-hooks; idempotent."""
        if self._removed:
            return
        for model, saved, hook in reversed(self._installs):
            hook.remove()
            model.set_attn_processor(dict(saved))  # it pops from the dict it gets
        self._removed = True

    def __enter__(self) -> "WindowAttention":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _record_latent_size(state: WindowState):
    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        # UNetMotionModel: (B, C, F, H, W); UNet2DConditionModel / ControlNetModel: (B, C, H, W)
        state.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    return hook


def install_window_attention(
    model: torch.nn.Module,
    blocks=DEFAULT_BLOCKS,
    grid: tuple[int, int] = (2, 2),
    shift: bool = True,
    controlnet: torch.nn.Module | None = None,
    controlnet_blocks=("down_blocks.0",),
) -> WindowAttention:
    """Window the spatial self-attention (attn1) of ``model``'s blocks under the given prefixes.

    ``model`` is a UNetMotionModel, UNet2DConditionModel or ControlNetModel; a
    ControlNet used alongside it is passed as ``controlnet`` with its own blocks
    (it has no up blocks). All other processors are kept as they are. Block names
    are checked before anything is changed.
    """
    grid = (int(grid[0]), int(grid[1]))
    if min(grid) < 1:
        raise ConfigError(f"window attention: grid must be two positive integers, got {grid}")
    names = spatial_self_attention_names(model, blocks)
    cn_names = spatial_self_attention_names(controlnet, controlnet_blocks) if controlnet is not None else []
    state = WindowState(grid=grid, shift=bool(shift))
    processor = WindowAttnProcessor(state)
    installs = []
    for m, targets in ((model, names), (controlnet, cn_names)):
        if m is None:
            continue
        saved = dict(m.attn_processors)
        m.set_attn_processor({k: (processor if k in targets else p) for k, p in saved.items()})
        hook = m.register_forward_pre_hook(_record_latent_size(state), with_kwargs=True)
        installs.append((m, saved, hook))
    return WindowAttention(state=state, names=names, controlnet_names=cn_names, _installs=installs)


def attention_flops(hw: tuple[int, int], inner_dim: int, grid: tuple[int, int] = (1, 1), offset=(0, 0)) -> int:
    """FLOPs (2 per multiply-add) of the QK^T and AV products of one sequence on an (H, W) token grid.

    inner_dim is heads * head_dim; grid and offset give the windowed count (grid 1x1 = full attention).
    """
    (h, w), (gh, gw) = hw, grid
    ys = _segments(h, -(-h // gh), offset[0])
    xs = _segments(w, -(-w // gw), offset[1])
    tokens_sq = sum((y1 - y0) ** 2 for y0, y1 in ys) * sum((x1 - x0) ** 2 for x0, x1 in xs)
    return 4 * tokens_sq * inner_dim


__all__ = [
    "DEFAULT_BLOCKS",
    "WindowAttention",
    "WindowAttnProcessor",
    "WindowState",
    "attention_flops",
    "install_window_attention",
    "shift_offsets",
    "should_enable",
    "spatial_self_attention_names",
]
