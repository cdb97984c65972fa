"""Check that tests/test_wiring.py catches wiring bugs: inject one deliberate bug at a time, run its test, revert.

Works on a throwaway git worktree of HEAD (the checkout is never touched); prints one line
per bug and exits 1 if any went uncaught. A bug whose code pattern no longer exists is
reported as SKIP (update the pattern with the code).

    python scripts/check_wiring_mutations.py
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
W = "tests/test_wiring.py::"
# (what the bug is, file, code, the code with the bug, the test that must fail)
MUTATIONS = [
    ("guidance rows swapped (eps_c + s(eps_u - eps_c))", "motia/sampler.py",
        "eps_uncond, eps_cond = denoise(torch.cat([x, x]), t, cond, window).float().chunk(2)",
        "eps_cond, eps_uncond = denoise(torch.cat([x, x]), t, cond, window).float().chunk(2)",
        W + "test_guided_eps_is_built_from_the_two_prompts_on_exactly_the_guided_steps"),
    ("guidance on one step too many (src <= guidance_steps)", "motia/sampler.py",
        "(guidance_steps is None or src < guidance_steps)", "(guidance_steps is None or src <= guidance_steps)",
        W + "test_guided_eps_is_built_from_the_two_prompts_on_exactly_the_guided_steps"),
    ("regret re-noises to the source level (levels[src] twice)", "motia/sampler.py",
        "x = renoise(x, levels[src], levels[dst], noise)", "x = renoise(x, levels[src], levels[src], noise)",
        W + "test_regret_moves_follow_the_schedule_and_renoise_to_the_right_level"),
    ("regret noise drawn as zeros", "motia/sampler.py",
        "                noise = randn_like(x, generator)\n", "                noise = torch.zeros_like(x.float())\n",
        W + "test_one_regret_cycle_equals_a_hand_written_loop"),
    ("insertion K ignored (map of K=0)", "motia/outpaint.py",
        "scale_map = insertion_map(canvas, cfg.sample.insertion.k)", "scale_map = insertion_map(canvas, 0.0)",
        W + "test_insertion_k_changes_a_run_with_everything_else_equal"),
    ("insertion map not resized per layer (nearest instead of area)", "motia/insertion.py",
        "g = resize_map(self.scale_map, gh, gw)", "g = torch.nn.functional.interpolate(self.scale_map[None, None], size=(gh, gw), mode='nearest')[0, 0]",
        W + "test_every_lora_layer_is_scaled_by_the_resized_insertion_map"),
    ("lora_scale ignored", "motia/outpaint.py",
        "m.set_scale(ADAPTER_NAME, cfg.sample.lora_scale)", "m.set_scale(ADAPTER_NAME, 1.0)",
        W + "test_every_lora_layer_is_scaled_by_the_resized_insertion_map"),
    ("window shift frozen at step 0", "motia/outpaint.py",
        "handle.set_step(cond[\"move\"])", "handle.set_step(0)",
        W + "test_window_shift_at_every_call_is_the_move_index"),
    ("window shift follows the step index, not the move", "motia/outpaint.py",
        "handle.set_step(cond[\"move\"])", "handle.set_step(cond[\"step\"])",
        W + "test_window_shift_at_every_call_is_the_move_index"),
    ("window frames shifted by one (the window before s)", "motia/sampler.py",
        "preds = (denoise(x[:, :, s:e], t, cond, (s, e)) for s, e in wins)",
        "preds = (denoise(x[:, :, max(s - 1, 0):e - 1 if s else e], t, cond, (s, e)) for s, e in wins)",
        W + "test_each_window_call_sees_its_frames_of_the_latents_and_the_control_video"),
    ("weights kind ignored (always flat)", "motia/windows.py",
        "w = window_weights(end - start, kind, device=pred.device)", "w = window_weights(end - start, 'flat', device=pred.device)",
        W + "test_blend_weights_reach_the_blend"),
    ("known region re-noised to the previous level", "motia/sampler.py",
        "alpha = None if dst == num_steps else levels[dst]", "alpha = None if dst == num_steps else levels[src]",
        W + "test_known_cells_follow_the_source_and_generated_cells_move_in_every_frame"),
    ("controlnet scale not passed (always 1)", "motia/outpaint.py",
        "conditioning_scale=controlnet_scale,", "conditioning_scale=1.0,",
        W + "test_controlnet_scale_reaches_the_residuals_and_zero_skips_the_controlnet"),
    ("controlnet run at scale 0", "motia/outpaint.py",
        "use_cn = controlnet is not None and controlnet_scale > 0", "use_cn = controlnet is not None",
        W + "test_controlnet_scale_reaches_the_residuals_and_zero_skips_the_controlnet"),
    ("adapter loaded but never applied (scale 0)", "motia/outpaint.py",
        "m.set_scale(ADAPTER_NAME, cfg.sample.lora_scale)", "m.set_scale(ADAPTER_NAME, 0.0)",
        W + "test_a_trained_adapter_changes_the_result_and_reloads_identically"),
    ("axes with one window shift anyway (1x1 grid split in two)", "motia/attention.py",
        "return (dy if gh > 1 else 0), (dx if gw > 1 else 0)", "return dy, dx",
        W + "test_one_by_one_window_grid_on_every_block_is_plain_attention"),
]


def main() -> int:
    root = tempfile.mkdtemp(prefix="motia-mutations-")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", root, "HEAD"], check=True,
                   capture_output=True)
    try:
        return check(root)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", root], capture_output=True)


def check(root: str) -> int:
    env = {**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1"}
    missed = 0
    for desc, path, old, new, test in MUTATIONS:
        f = os.path.join(root, path)
        src = open(f).read()
        if src.count(old) != 1:
            print(f"SKIP    {desc}: the pattern occurs {src.count(old)} times in {path}", flush=True)
            continue
        open(f, "w").write(src.replace(old, new))
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test], cwd=root,
                               env=env, capture_output=True, text=True, timeout=900)
        finally:
            open(f, "w").write(src)
        caught = r.returncode == 1
        missed += not caught
        print(f"{'CAUGHT' if caught else 'MISSED'}  {desc}  ({test.split('::')[-1]}, pytest rc {r.returncode})", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
