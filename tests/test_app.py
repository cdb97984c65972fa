"""The web app: `motia app` driven through gradio_client (preview, adapt, cache hit, outpaint, errors), its logic, its queue."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from motia.app import App, Choices, StepReport, format_seconds
from motia.cli import main
from motia.config import load_config
from motia.errors import ConfigError, InputError
from motia.job import REPO_CONFIGS
from motia.video import probe_video, read_video, sample_clip_path

TINY = str(REPO_CONFIGS / "tiny.yaml")


def client(url, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))


def upload(path):
    from gradio_client import handle_file

    return handle_file(str(path))


def app_error(call) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        call()
    return str(e.value)


# ----------------------------------------------------------------------------- through the served app


def test_upload_preview_adapt_outpaint(app_server, tmp_path):
    url, folder = app_server
    c = client(url, tmp_path)
    clip = upload(sample_clip_path())

    png, estimate = c.predict(video=clip, api_name="/preview")
    from PIL import Image

    w, h = Image.open(png).size  # the 96x64 clip with 0.25 of its width added on each side: 144x64, scaled up
    assert w == 144 * (w // 144) and w >= 512 and h > 64 * (w // 144)  # whole factor, legend below
    assert "64 × 144" in estimate and "**frames** 8" in estimate
    assert (folder / "outputs" / "sample" / "preview.png").is_file()  # where `motia preview` writes it

    status, files = c.predict(video=clip, api_name="/adapt")
    assert status.startswith("**Adapter trained**") and "2/2 steps" in status and "final loss" in status
    assert [Path(f).name for f in files] == ["adapter.safetensors"]
    status, _ = c.predict(video=clip, api_name="/adapt")  # same frames, prompt, seed, recipe: no training
    assert status.startswith("**Adapter cache hit**")
    assert len(list((folder / "adapters").glob("*/adapter.safetensors"))) == 1

    mp4, side_by_side, files, status = c.predict(video=clip, api_name="/outpaint")
    info = probe_video(mp4)
    assert (info.num_frames, info.height, info.width) == (8, 64, 144)
    assert read_video(mp4).frames.shape == (8, 3, 64, 144)
    assert probe_video(side_by_side).num_frames == 8
    assert [Path(f).name for f in files] == ["outpaint.mp4", "adapter.safetensors", "config.yaml"]
    assert "2/2 denoising steps" in status and "(coarse pass on 64 × 144, 2 UNet calls in " in status
    assert "no refine pass: refine off)" in status  # tiny.yaml's outpaint.refine.mode
    # The run folder the CLI uses holds the same outputs, and its config reproduces the run.
    run = folder / "outputs" / "sample"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["frames"] == 8 and Path(summary["lora"]).parent.parent == folder / "adapters"
    cfg = load_config(run / "config.yaml")
    assert cfg.sample.steps == 2 and cfg.outpaint.left == 0.25
    assert Path(cfg.video.path) == run / "sample.mp4"  # the upload, kept beside the outputs: the config reruns
    assert (run / "sample.mp4").read_bytes() == sample_clip_path().read_bytes()

    # Refine on: at this clip's own scale the coarse frames are the same, but the adapter also learns crops at the
    # refine scale (adapt.crops: auto), so it is another one: Adapt again; then a second stage runs.
    msg = app_error(lambda: c.predict(video=clip, refine="on", api_name="/outpaint"))
    assert "press Adapt first" in msg
    c.predict(video=clip, refine="on", api_name="/adapt")
    assert len(list((folder / "adapters").glob("*/adapter.safetensors"))) == 2
    _, _, _, status = c.predict(video=clip, refine="on", api_name="/outpaint")
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stages"]) == ["coarse", "refine"] and summary["stages"]["refine"]["unet_calls"] == 3
    assert "; refine pass on 64 × 144, 3 UNet calls in " in status and "5/5 denoising steps" in status
    r = load_config(run / "config.yaml").outpaint.refine
    assert (r.mode, r.coarse_size, r.steps) == ("on", 64, 8)  # the page sets the mode, the config the rest


def test_refine_choice_reaches_the_estimate(app_server, tmp_path):
    """Preview with refine off, auto and on: the estimate shows the coarse canvas and the refine stage when it runs."""
    url, _ = app_server
    c = client(url, tmp_path)
    clip = upload(sample_clip_path())
    big = dict(video=clip, left=0.5, right=0.5, top=1.0)  # 128 x 192 from the 64 x 96 clip: over 1.5 x 64 px

    _, off = c.predict(**big, refine="off", api_name="/preview")
    assert off.startswith("**Canvas** 128 × 192 px (source 64 × 96;")
    assert off.endswith("**Refine** off: one pass at the canvas's scale, upsampled to the output")
    _, auto = c.predict(**big, refine="auto", api_name="/preview")
    assert auto.startswith("**Coarse canvas** 64 × 96 px (source 32 × 48;")  # read at coarse_size, not video.size
    assert auto.endswith("**Refine** at the output's resolution: 128 × 192 px (2.00× the coarse canvas) on the whole "
                         "canvas, 3 of 8 steps (strength 0.4), 3 UNet calls · **total** 5 UNet calls")  # fmt: skip
    _, small = c.predict(video=clip, refine="auto", api_name="/preview")  # tiny.yaml's 64 x 144: not needed
    assert small.endswith("**Refine** auto: not needed, the output's short side is at most 1.5× the coarse canvas's "
                          "64 px")  # fmt: skip
    _, on = c.predict(video=clip, refine="on", api_name="/preview")
    assert "**Refine** at the output's resolution: 64 × 144 px (1.00× the coarse canvas)" in on


def test_bad_input_shows_the_cli_message_and_the_app_keeps_serving(app_server, tmp_path, capsys):
    url, _ = app_server
    c = client(url, tmp_path)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"this is not a video " * 50)

    msg = app_error(lambda: c.predict(video=upload(bad), api_name="/preview"))
    assert main(["info", TINY, f"video.path={bad}"]) == 2
    cli = capsys.readouterr().err.strip()

    def shape(line: str):  # the app reads its own copy of the upload: compare all but the path
        m = re.fullmatch(r"error: (.+?): cannot read video \((.*)\); check that it plays, or re-encode it to H.264 mp4",
                         line)  # fmt: skip
        assert m, line
        return Path(m[1]).name, re.findall(r"(\w+): ", m[2].replace(m[1], ""))

    assert "\n" not in msg and shape(msg) == shape(cli) == ("corrupt.mp4", shape(cli)[1])

    msg = app_error(lambda: c.predict(video=upload(sample_clip_path()), left=0, right=0, api_name="/preview"))
    assert msg == "error: outpaint: nothing to outpaint; set outpaint.left/right/top/bottom, outpaint.target_size " \
                  "or outpaint.aspect"  # fmt: skip
    msg = app_error(lambda: c.predict(video=upload(sample_clip_path()), seed=12345, api_name="/outpaint"))
    assert msg.startswith("error: no adapter for this clip") and "press Adapt first" in msg

    png, _ = c.predict(video=upload(sample_clip_path()), canvas="aspect", aspect="1:1", api_name="/preview")
    from PIL import Image

    w, _ = Image.open(png).size  # still serving: the 96x96 canvas, scaled up by a whole factor
    assert w % 96 == 0 and w >= 512


# ----------------------------------------------------------------------------- the logic and the page, in process


@pytest.fixture(scope="module")
def app():
    return App(TINY, ["video.max_frames=4"])


@pytest.mark.parametrize(
    "choice, size",
    [
        (dict(canvas="sides", left=0.25, right=0.25), (64, 144)),
        (dict(canvas="sides", top=0.5), (96, 96)),
        (dict(canvas="aspect", aspect="16:9"), (64, 120)),  # 113.8 wide, rounded up to a multiple of 8
        (dict(canvas="aspect", aspect="9:16"), (176, 96)),
        (dict(canvas="aspect", aspect="1:1"), (96, 96)),
        (dict(canvas="aspect", aspect="4:3"), (72, 96)),
        (dict(canvas="target size", height=80, width=160), (80, 160)),
    ],
)
def test_canvas_choices_make_the_configs_canvas(app, choice, size):
    from motia.planning import plan

    cfg = app.config(Choices(video=str(sample_clip_path()), **choice))
    clip = app.clip(cfg)
    canvas = plan(cfg, clip.height, clip.width)
    assert (canvas.height, canvas.width) == size


def test_page_options_reach_the_config_and_the_rest_comes_from_it(app):
    ch = Choices(video=str(sample_clip_path()), canvas="sides", left=0.5, prompt="a red car", seed=7, steps=3,
                 guidance=5.0, k=0.5, regret=0, window_attention="on", refine="on")  # fmt: skip
    cfg = app.config(ch)
    assert (cfg.prompt, cfg.seed, cfg.sample.steps, cfg.sample.guidance_scale) == ("a red car", 7, 3, 5.0)
    assert (cfg.sample.insertion.k, cfg.sample.regret.repeats, cfg.sample.window_attention.enabled) == (0.5, 0, True)
    r = cfg.outpaint.refine
    assert (r.mode, r.coarse_size, r.steps) == ("on", 64, 8)  # the page's mode; tiny.yaml's size and steps kept
    assert app.config(Choices(**{**vars(ch), "refine": "off"})).outpaint.refine.mode == "off"
    assert cfg.video.max_frames == 4 and cfg.adapt.steps == 60 and cfg.sample.guidance_steps == 5  # config + override
    assert app.config(Choices(**{**vars(ch), "auto_caption": True})).prompt == "auto"
    d = app.defaults()
    assert (d.canvas, d.left, d.right, d.steps, d.prompt, d.refine) == ("sides", 0.25, 0.25, 8, "a sunny beach", "off")
    assert App(TINY, ["outpaint.refine.mode=auto"]).defaults().refine == "auto"


def test_the_pages_canvas_replaces_the_configs_and_the_other_outpaint_keys_stay(tmp_path):
    app = App(TINY, ["outpaint.propagate=off", "outpaint.multiple=16", "outpaint.refine.strength=0.6"])
    cfg = app.config(Choices(video=str(sample_clip_path()), canvas="aspect", aspect="1:1", refine="auto"))
    o = cfg.outpaint
    assert (o.aspect, o.left, o.right, o.propagate, o.multiple) == ("1:1", 0.0, 0.0, "off", 16)
    assert (o.refine.mode, o.refine.strength, o.refine.coarse_size) == ("auto", 0.6, 64)


def test_the_clip_is_read_again_when_refine_changes_its_scale(app):
    """Refine reads the clip at the coarse scale (planning.model_size): the cached frames follow the choice."""
    big = dict(video=str(sample_clip_path()), left=0.5, right=0.5, top=1.0)
    sizes = [app.clip(app.config(Choices(**big, refine=mode))).frames.shape[-2:] for mode in ("off", "auto", "off")]
    assert [tuple(s) for s in sizes] == [(64, 96), (32, 48), (64, 96)]


@pytest.mark.parametrize(
    "overrides, refine, lines",
    [
        # 8 steps + 4 noise-regret re-runs, one window; refine: 3 of 8 steps x (12 tiles - 1 inside the source)
        ([], "off", ["**Canvas** 128 × 192 px", "**Outpaint** 8 steps, 12 UNet calls (9 guided)", "**Refine** off"]),
        (["sample.tiles.size=64", "sample.tiles.overlap=16"], "on",
         ["**Coarse canvas** 64 × 96 px", "**Outpaint** 8 steps in 2 tiles of 64 × 64 px, 24 UNet calls (18 guided)",
          "**Refine** at the output's resolution: 128 × 192 px (2.00× the coarse canvas) in 12 tiles of 64 × 64 px, "
          "3 of 8 steps (strength 0.4), 33 UNet calls · **total** 57 UNet calls"]),
    ],
)
def test_the_estimate_shows_each_stage_and_its_tiles(overrides, refine, lines):
    from motia.app import estimate_text
    from motia.planning import plan_stages

    app = App(TINY, ["video.max_frames=4", "sample.tiles.enabled=true", *overrides])
    cfg = app.config(Choices(**{**vars(app.defaults()), "video": str(sample_clip_path()), "left": 0.5, "right": 0.5,
                                "top": 1.0, "refine": refine}))  # fmt: skip
    stages = plan_stages(cfg, app.clip(cfg))
    text = estimate_text(cfg, app.clip(cfg), stages).split("  \n")
    assert len(text) == 3 and all(want in line for line, want in zip(text, lines)), text
    assert sum(st.work["unet_calls"] for st in stages.stages) == (57 if refine == "on" else 12)  # `motia info`'s


@pytest.mark.parametrize(
    "choice, needle",
    [
        (dict(video=None), "no clip"),
        (dict(canvas="target size"), "outpaint.target_size: give the canvas height and width"),
        (dict(canvas="target size", height=32, width=200), "outpaint.target_size"),  # smaller than the clip
        (dict(canvas="aspect", aspect="wide"), "outpaint.aspect"),
        (dict(steps=2.5), "sample.steps"),
        (dict(refine="sometimes"), "refine 'sometimes': use one of auto, on, off"),
    ],
)
def test_bad_choices_are_one_line_errors(app, choice, needle):
    from motia.planning import plan

    with pytest.raises((ConfigError, InputError)) as e:
        cfg = app.config(Choices(**{"video": str(sample_clip_path()), **choice}))
        plan(cfg, 64, 96)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_step_report_line_and_time_left():
    now = [100.0]
    seen = []
    report = StepReport("adapt", 10, lambda f, text: seen.append((f, text)), clock=lambda: now[0])
    report({"step": 1, "loss": 0.5, "lr": 1e-4})  # the first step carries the setup: no pace yet
    now[0] = 104.0
    report({"step": 3, "loss": 0.25, "lr": 1e-4})  # 2 s per step since step 1, 7 steps to go
    assert seen == [(0.1, "adapt 1/10 · loss 0.5000"), (0.3, "adapt 3/10 · loss 0.2500 · 0:14 left")]
    out = StepReport("outpaint", None)
    out({"step": 2, "total": 17})
    assert out.line == "outpaint 2/17" and out.total == 17
    assert format_seconds(3723) == "1:02:03" and format_seconds(59.6) == "1:00"


def test_one_job_at_a_time(app_server, tmp_path):
    """Outpaint sent while Adapt trains waits for it (one job slot): it then finds the adapter Adapt made."""
    import time

    from gradio_client.utils import Status

    url, _ = app_server
    c = client(url, tmp_path)
    settings = dict(video=upload(sample_clip_path()), seed=99)  # a seed no other test adapts with
    adapt = c.submit(**settings, api_name="/adapt")
    deadline = time.monotonic() + 60
    while adapt.status().code not in (Status.PROCESSING, Status.PROGRESS, Status.FINISHED):
        assert time.monotonic() < deadline, adapt.status()
        time.sleep(0.05)
    outpaint = c.submit(**settings, api_name="/outpaint")  # in parallel it would find no adapter and fail
    assert adapt.result()[0].startswith("**Adapter trained**")
    assert probe_video(outpaint.result()[0]).num_frames == 8


def test_without_gradio_the_verb_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["app", TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: motia app needs gradio, an optional extra: pip install "motia[app]"'


@pytest.mark.parametrize(
    "argv, want",
    [
        (["app"], (None, [], "127.0.0.1", None, None, None, False)),
        (["app", "sample.steps=3", "--port", "9000"], (None, ["sample.steps=3"], "127.0.0.1", 9000, None, None, False)),
        (["app", TINY, "seed=2", "--host", "0.0.0.0", "--auth-file", "pw"],
         (TINY, ["seed=2"], "0.0.0.0", None, None, "pw", False)),
        (["app", "--host", "0.0.0.0", "--no-auth"], (None, [], "0.0.0.0", None, None, None, True)),
        (["app", "--auth", "ada:pw"], (None, [], "127.0.0.1", None, "ada:pw", None, False)),
    ],
)
def test_app_verb_arguments(monkeypatch, argv, want):
    import motia.app

    got = []
    monkeypatch.setattr(motia.app, "launch", lambda config, overrides, host, port, auth, auth_file, no_auth: got.append(
        (config, overrides, host, port, auth, auth_file, no_auth)))  # fmt: skip
    assert main(argv) == 0 and got == [want]


# ----------------------------------------------------------------------------- a password off loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "my-box.local"])
def test_off_loopback_without_a_password_refuses_in_one_line(monkeypatch, capsys, host):
    monkeypatch.delenv("MOTIA_APP_AUTH", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # refused before gradio is even needed
    assert main(["app", TINY, "--host", host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --host {host} serves the app to other machines: give it a password with --auth-file FILE "
                   "(a line USER:PASSWORD), $MOTIA_APP_AUTH=USER:PASSWORD or --auth USER:PASSWORD, or pass --no-auth "
                   "to serve it open to anyone who reaches the port"]  # fmt: skip


def test_where_the_password_comes_from(tmp_path, caplog):
    from motia.app import resolve_auth

    pw = tmp_path / "pw"
    pw.write_text("# the app's login\n\nada:s3cr:et\n")
    pw.chmod(0o600)
    env = {"MOTIA_APP_AUTH": "env:pw"}
    assert resolve_auth("0.0.0.0", auth="ada:x") == ("ada", "x")
    assert resolve_auth("0.0.0.0", auth_file=pw, environ=env) == ("ada", "s3cr:et")  # the file before the variable
    assert resolve_auth("0.0.0.0", environ=env) == ("env", "pw")
    for host in ("127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"):  # loopback: optional
        assert resolve_auth(host, environ={}) is None
    assert resolve_auth("localhost", environ=env) == ("env", "pw")  # given, it is used there too
    assert not caplog.records
    assert resolve_auth("0.0.0.0", no_auth=True, environ={}) is None
    assert [r.getMessage() for r in caplog.records] == [
        "serving on 0.0.0.0 without a password (--no-auth): anyone who reaches this port can run jobs on this "
        "machine and download every output"]  # fmt: skip
    pw.chmod(0o644)
    caplog.clear()
    assert resolve_auth("0.0.0.0", auth_file=pw) == ("ada", "s3cr:et")
    assert "can be read by other users of this machine" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(auth="ada"), "--auth: give USER:PASSWORD"),
        (dict(auth=":pw"), "--auth: give USER:PASSWORD"),
        (dict(auth="a:b", auth_file="f"), "give the password one way"),
        (dict(auth="a:b", no_auth=True), "--no-auth serves the page without a password"),
        (dict(auth_file="/nonexistent/pw"), "--auth-file /nonexistent/pw: cannot read it"),
        (dict(environ={"MOTIA_APP_AUTH": "nocolon"}), "$MOTIA_APP_AUTH: give USER:PASSWORD"),
    ],
)
def test_bad_credentials_are_one_line_errors(kwargs, needle):
    from motia.app import resolve_auth
    from motia.errors import MotiaError

    with pytest.raises(MotiaError) as e:
        resolve_auth("0.0.0.0", **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_with_a_password_a_request_without_it_is_turned_away(tmp_path_factory, tmp_path):
    """Served on 0.0.0.0 (connected through 127.0.0.1) with --auth-file: no login, a wrong one, the right one."""
    from conftest import serve_app

    gradio_client = pytest.importorskip("gradio_client")
    from gradio_client.exceptions import AuthenticationError

    folder = tmp_path_factory.mktemp("app_auth")
    (folder / "pw").write_text("ada:s3cr:et\n")
    (folder / "pw").chmod(0o600)
    with serve_app(folder, "0.0.0.0", ["--auth-file", "pw"], env={"MOTIA_APP_AUTH": ""}) as (url, _):
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            gradio_client.Client(url, verbose=False, analytics_enabled=False)
        with pytest.raises(ValueError, match="Could not login"):
            gradio_client.Client(url, auth=("ada", "wrong"), verbose=False, analytics_enabled=False)
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as e:  # the API itself, not only the client, wants the login
            urllib.request.urlopen(url + "/gradio_api/info", timeout=10)
        assert e.value.code == 401
        c = gradio_client.Client(url, auth=("ada", "s3cr:et"), verbose=False, analytics_enabled=False,
                                 download_files=str(tmp_path))  # fmt: skip
        assert Path(c.predict(api_name="/sample")).read_bytes() == sample_clip_path().read_bytes()


def test_library_imports_without_gradio():
    code = "import sys; sys.modules['gradio'] = None; import motia.app, motia.cli; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
