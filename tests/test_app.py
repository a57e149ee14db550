"""The sampling app (apps/sample_app.py): its request handling, and the real app driven in
headless Chromium (Debian's `chromium` through PyPI's `playwright`).

KERAS_DDPM_SCREENSHOT=PATH keeps the browser test's screenshot there (otherwise it goes to a
temporary folder); the README's screenshot of the shipped model is `docs/make_figures.py --app`."""

import dataclasses
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import randomize_weights
from PIL import Image

from keras_ddpm import DiffusionModel
from keras_ddpm import diffusion_model
from keras_ddpm import get_preset
from keras_ddpm import sample_request
from keras_ddpm import samplers
from keras_ddpm import sampling_modes
from keras_ddpm import sampling_options
from keras_ddpm.diffusion_model import to_uint8
from keras_ddpm.images import make_grid

gradio = pytest.importorskip("gradio")
from apps import sample_app  # noqa: E402

pytestmark = pytest.mark.once  # the app is backend-free (tests/backend/test_isolation.py)

CHROMIUM = "/usr/bin/chromium"
STEPS = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A class-conditional tiny model with random weights (so different seeds draw different
    images)."""
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    randomize_weights(DiffusionModel(get_preset("tiny").replace(num_classes=10))).save(path)
    return str(path)


@pytest.fixture(scope="module")
def app(model_path, tmp_path_factory):
    registry = sample_app.ModelRegistry(
        [model_path], saved_models=str(tmp_path_factory.mktemp("empty"))
    )
    return sample_app.SamplingApp(
        registry, max_images=64, work_dir=str(tmp_path_factory.mktemp("results"))
    )


def form(path, **values):
    """The form's values in `SamplingApp.sample`'s order (the UI's defaults, then `values`)."""
    defaults = dict(
        model_path=path,
        mode="normal",
        sampler="ddim",
        steps=STEPS,
        eta=0.0,
        guidance=0.0,
        class_label=sample_app.ALL_CLASSES,
        seed=0.0,
        num_images=10.0,
        n_frames=20.0,
        upload1=None,
        index1=0.0,
        upload2=None,
        index2=1.0,
        interpolate_at="",
        n_points=10.0,
        space="pixel",
        coarse_timesteps="",
        mask="",
    )
    return {**defaults, **values}


def test_result_is_what_its_cli_command_draws(app, model_path, tmp_path, monkeypatch):
    reported = []
    grid, gif, files, settings, command = app.sample(
        **form(model_path, seed=7.0, num_images=6.0, class_label="3"),
        progress=lambda value, **_: reported.append(value),
    )
    assert reported == [(step, STEPS) for step in range(STEPS + 1)]  # every denoising step
    assert gif is None and [os.path.basename(f) for f in files] == [
        "samples.png",
        "tiles.zip",
        "settings.json",
    ]
    assert '"seed": 7' in settings and '"class_label": 3' in settings
    pixels = np.asarray(Image.open(grid))
    assert pixels.shape == make_grid(np.zeros((6, 16, 16, 1), np.uint8)).shape[:2]  # 3 x 2 tiles
    monkeypatch.chdir(tmp_path)
    from keras_ddpm.cli import cli

    args = shlex.split(command)
    assert args[:3] == ["python", "cli.py", "sample"] and "--class-label" in args
    result = CliRunner().invoke(cli, args[2:])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "samples.png")), pixels)


@pytest.mark.slow
def test_the_app_builds_from_anywhere_without_the_cli_module_or_sys_path_changes(tmp_path):
    # Outside the repository, as `python apps/sample_app.py` runs with keras_ddpm installed:
    # the module and the form of the shipped model.
    script = os.path.abspath(sample_app.__file__)
    code = (
        "import runpy, sys; before = list(sys.path); "
        f"app = runpy.run_path({script!r}, run_name='sample_app'); "
        "registry = app['ModelRegistry'](); "
        "app['build_ui'](app['SamplingApp'](registry, work_dir='.')); "
        "assert sys.path == before, sys.path; "
        "print([m for m in ('cli', 'keras_ddpm.cli') if m in sys.modules])"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_form_is_built_from_the_sampling_options(app):
    demo = sample_app.build_ui(app)
    widgets = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    labels = sampling_options.MODE_LABELS
    assert widgets["mode"].choices == [(labels[mode], mode) for mode in sampling_options.MODES]
    samplers_offered = [sampler for _, sampler in widgets["sampler"].choices]
    assert samplers_offered == list(sampling_options.SAMPLERS)
    spaces = [space for _, space in widgets["space"].choices]
    assert spaces == list(sampling_options.INTERPOLATION_SPACES)
    names = ("mode", "sampler", "steps", "num_images", "n_points")
    values = [widgets[name].value for name in names]
    assert values == ["normal", "ddim", 50, 16, 10]
    (mode_changed,) = [f.fn for f in demo.fns.values() if f.name == "mode_changed"]
    updates = mode_changed("coarse_to_fine")
    sampler, n_frames, real, second, interpolation, coarse, mask, gif = updates
    assert sampler["value"] == "ddpm" and real["visible"] and coarse["visible"]
    hidden = (n_frames, second, interpolation, mask, gif)
    assert not any(update["visible"] for update in hidden)
    sampler, n_frames, *_, gif = mode_changed("denoising_process")
    assert sampler["value"] == "ddim" and gif["visible"]
    assert n_frames == {"__type__": "update", "visible": True, "value": 20}
    assert mode_changed("sequence")[1]["value"] == 10


def test_commands_name_the_modes_options(app, model_path):
    from keras_ddpm.cli import cli

    model = app.registry.load(model_path)
    request = sample_request.SampleRequest(
        mode="coarse_to_fine", steps=5, seed=3, batch_size=4, coarse_timesteps=(50, 10), n_points=3
    )
    assert request.resolve(model).command("m.keras", "out.png") == (
        "python cli.py sample --model m.keras --mode coarse_to_fine --sampler ddpm --steps 5 "
        "--variance fixed_small --seed 3 --batch-size 4 "  # the model's variance, resolved
        "--coarse-timesteps 50,10 --save-path out.png"
    )
    extra = {
        "interpolation": dict(image_idx2=4, interpolate_at=20, interpolation_space="latent"),
        "inpainting": dict(mask="0,0,8,8"),
    }
    for mode in sampling_options.MODES:
        request = sample_request.SampleRequest(
            mode=mode, eta=0.5, guidance=1.5, class_label=2, n_frames=3, **extra.get(mode, {})
        )
        args = shlex.split(request.resolve(model).command("m.keras", "out.png"))
        # parses every option, runs nothing
        context = cli.commands["sample"].make_context("sample", args[3:])
        assert (
            context.params["mode"] == mode
            and context.params["class_label"] == 2
            and context.params["eta"] == 0.5
        )


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(steps=0.0), "Steps must be a whole number from 1 to 100"),
        (dict(steps=None), "Steps is empty"),
        (dict(num_images=500.0), "The number of images must be a whole number from 1 to 64"),
        (dict(seed=-1.0), "Seed must be a whole number from 0"),
        (dict(mode="coarse_to_fine", sampler="ddim"), "needs a stochastic sampler"),
        (dict(mode="inpainting", mask="1,2,3"), "A mask box is 'x0,y0,x1,y1'"),
        (dict(model_path="/etc/passwd"), "Choose one of the listed models"),
    ],
)
def test_bad_values_give_one_sentence(app, model_path, values, message):
    with pytest.raises(ValueError, match=message):
        app.sample(**form(model_path, **values))


def test_requests_over_the_limits_are_refused_before_sampling(app, model_path, monkeypatch):
    def sampled(*args, **kwargs):
        raise AssertionError("the request was not refused")

    monkeypatch.setattr(sample_request, "real_images", sampled)
    monkeypatch.setattr(sample_request, "run", sampled)
    many_rows = dict(
        mode="coarse_to_fine",
        sampler="ddpm",
        num_images=64.0,
        coarse_timesteps=",".join(["50"] * 5000),
    )
    with pytest.raises(
        ValueError,
        match=(
            r"^The number of coarse-to-fine timesteps must be a whole number from 1 to 64\. "
            r"Received: 5000$"
        ),
    ):
        app.sample(**form(model_path, **many_rows))
    # 3 rows x 64 images x 100 DDPM steps, each row from t = 99: 19,200 evaluations.
    long_rows = dict(many_rows, coarse_timesteps="99,99,99", steps=100.0)
    with pytest.raises(
        ValueError, match=r"at most 16,000 network evaluations .* Received: 19,200 evaluations$"
    ):
        app.sample(**form(model_path, **long_rows))
    assert app.preview(*form(model_path, **long_rows).values()).startswith(
        "# One request may cost at most 16,000 network evaluations"
    )
    assert sample_app.parse_args([]).max_evaluations == sample_app.MAX_EVALUATIONS == 16_000
    # The CLI's defaults (`resolve(model)`): the same row limit, and 10 million evaluations.
    model = app.registry.load(model_path)
    with pytest.raises(
        ValueError,
        match="coarse-to-fine timesteps must be a whole number from 1 to 64. Received: 5000",
    ):
        sample_request.SampleRequest(mode="coarse_to_fine", coarse_timesteps=(50,) * 5000).resolve(
            model
        )
    rows = sample_request.SampleRequest(
        mode="coarse_to_fine", batch_size=1024, coarse_timesteps=(99,) * 64, steps=100
    )
    assert rows.resolve(model).network_evaluations(model) == 1024 * 64 * 100  # 6.6 million: allowed
    with pytest.raises(
        ValueError,
        match=r"at most 10,000,000 network evaluations .* Received: 13,107,200 evaluations$",
    ):
        dataclasses.replace(rows, guidance=1.0).resolve(model)


class CountingModel:
    """A model that draws nothing and counts the network evaluations `sample_request.run` asks of
    it: each chain's planned steps x its images (x2 with guidance), and DDIM inversions."""

    def __init__(self, model):
        self._model = model
        self.evaluations = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(
        self,
        num_images=None,
        noise=None,
        callback=None,
        callback_steps=None,
        sampler="ddim",
        steps=50,
        eta=0.0,
        skip=None,
        variance="fixed_small",
        start_timestep=None,
        guidance=0.0,
        class_labels=None,
        **_,
    ):
        plan = samplers.make_plan(
            self._model.schedule, sampler, steps, eta, skip, variance, start_timestep
        )
        count = len(noise) if noise is not None else num_images
        # as `generate` decides
        guided = self._model._labels_for(class_labels, count) is not None and guidance != 0
        self.evaluations += count * len(plan) * (2 if guided else 1)
        x = np.zeros((count, *self._model.image_shape), np.float32)
        for step, t in enumerate(plan.timesteps):
            if callback is not None and (callback_steps is None or step in callback_steps):
                callback(step, t, x, x)
        return to_uint8(x)

    def invert(self, images, steps=50, skip="uniform", **_):
        self.evaluations += len(images) * len(
            samplers.ddim_inversion_plan(self._model.schedule, steps, skip)
        )
        return np.asarray(images)


@pytest.mark.parametrize(
    "values",
    [
        dict(mode="normal", steps=7, batch_size=5),
        dict(mode="normal", steps=7, batch_size=5, guidance=1.5),
        dict(mode="denoising_process", sampler="dpm_solver", steps=6, batch_size=3, n_frames=4),
        dict(mode="sequence", sampler="ddpm", steps=9, batch_size=2, n_frames=3),
        dict(mode="interpolation", steps=10, n_points=4, interpolate_at=30, guidance=1.0),
        dict(
            mode="interpolation", steps=10, n_points=4, interpolation_space="latent", guidance=1.0
        ),
        dict(mode="coarse_to_fine", steps=20, batch_size=3, coarse_timesteps=(99, 60, 7)),
        dict(
            mode="coarse_to_fine", sampler="ddim", eta=1.0, skip="quadratic", steps=8, batch_size=2
        ),
        dict(mode="inpainting", steps=5, batch_size=3, guidance=2.0, class_label=1),
    ],
)
def test_network_evaluations_are_what_each_mode_runs(app, model_path, values):
    model = app.registry.load(model_path)
    request = sample_request.SampleRequest(**values).resolve(model)
    counting = CountingModel(model)
    count = sampling_options.REAL_IMAGE_MODES.get(request.mode, 0)
    images = list(np.random.default_rng(0).uniform(-1, 1, (count, *model.image_shape)))
    sample_request.run(counting, request, images or None)
    assert request.network_evaluations(model) == counting.evaluations > 0


def test_preview_answers_while_the_longest_allowed_request_runs(app, model_path, tmp_path):
    # A cap of 6 images x 25 steps (6 of class 3, as the first test draws): the longest request it
    # allows runs in a thread while the command preview (the form's light handler, unqueued in the
    # app) is timed.
    capped = sample_app.SamplingApp(
        app.registry, max_images=6, max_evaluations=6 * 25, work_dir=str(tmp_path)
    )
    longest = form(model_path, num_images=6.0, class_label="3", steps=25.0)
    model, request, _ = capped.request(*longest.values())
    assert request.network_evaluations(model) == capped.max_evaluations
    # 26 steps of DDIM's uniform spacing of T = 100 are range(0, 100, 3): 34 evaluations an image.
    with pytest.raises(
        ValueError, match=r"at most 150 network evaluations .* Received: 204 evaluations$"
    ):
        capped.request(*form(model_path, num_images=6.0, steps=26.0).values())
    reported, running, errors = [], threading.Event(), []

    def progress(value, **_):
        reported.append(value)
        if value[0] >= 2:
            running.set()

    def sample():
        try:
            capped.sample(**longest, progress=progress)
        except Exception as error:  # surfaced below
            errors.append(error)
            running.set()

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        assert running.wait(120) and not errors, errors
        start = time.perf_counter()
        command = capped.preview(*form(model_path, seed=5.0, num_images=3.0).values())
        elapsed, at = time.perf_counter() - start, reported[-1]
    finally:
        thread.join(300)
    assert not errors and reported[-1] == (25, 25), errors
    assert at[0] < 25  # the preview answered while the request ran
    assert elapsed < 1.0 and "--seed 5 --batch-size 3" in command


def browser_values(demo, event):
    """The values the page sends for `event`'s inputs as it loads: each field's initial value,
    except that Gradio's number field shows and sends 0 for a blank (None) one (its frontend:
    `value ??= 0`)."""
    (function,) = [f for f in demo.fns.values() if f.name == event]
    values = {}
    for component in function.inputs:
        value = (
            0
            if isinstance(component, gradio.Number) and component.value is None
            else component.value
        )
        values[component.elem_id] = component.preprocess(value) if value is not None else None
    return values


def test_interpolation_starts_at_half_T_not_0(app, model_path):
    demo = sample_app.build_ui(app)
    values = browser_values(demo, "sample")
    # blank: T/2, a diffusion interpolation (0 is a cross-fade)
    assert values["interpolate_at"] in ("", None)
    values.update(mode="interpolation", model=model_path)
    _, request, _ = app.request(*values.values())
    assert request.interpolate_at is None and "--interpolate-at" not in app.preview(
        *values.values()
    )
    assert "--interpolate-at 30" in app.preview(*dict(values, interpolate_at=" 30 ").values())
    assert app.preview(*dict(values, interpolate_at="half").values()).startswith(
        "# The interpolation timestep must be a whole number"
    )


def test_a_port_in_use_gives_one_sentence_naming_port(model_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            sample_app.main(["--model", model_path, "--port", str(port)], block=False)
    message = exited.value.code  # a string: printed to stderr, exit status 1, no traceback
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert f"127.0.0.1:{port}" in message and "--port" in message and "GRADIO" not in message
    with pytest.raises(SystemExit) as exited:
        sample_app.main(["--port", "99999"])  # argparse: usage and exit status 2
    assert exited.value.code == 2


def test_help_shows_defaults_and_the_start_prints_one_address_line(capsys):
    with pytest.raises(SystemExit) as exited:
        sample_app.parse_args(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("127.0.0.1", "7860", "mnist_5k", "64", "16000", "1", "32"):
        assert f"(default: {default})" in text
    assert "--share" in text and "(default: [])" not in text and "(default: None)" not in text
    assert sample_app.parse_args(["--share"]).share and not sample_app.parse_args([]).share
    local = "http://127.0.0.1:7860/"
    assert sample_app._address_line(local) == (
        f"keras_ddpm app: open {local} in a browser (Ctrl-C stops it; --share makes a public link)"
    )
    assert "https://x.gradio.live" in sample_app._address_line(local, "https://x.gradio.live")


def test_the_app_prints_one_line_with_its_address(model_path):
    import contextlib
    import io

    port, printed = free_port(), io.StringIO()
    # Not capsys: Gradio's loggers would keep its stream, which closes after the test.
    with contextlib.redirect_stdout(printed):
        demo, url = sample_app.main(["--model", model_path, "--port", str(port)], block=False)
    try:
        out = printed.getvalue()
        assert out.splitlines() == [sample_app._address_line(url)], out
        assert url == f"http://127.0.0.1:{port}/" and "share=True" not in out
    finally:
        demo.close()


def test_model_load_errors_give_one_sentence(model_path, monkeypatch):
    def refuse(path):
        raise ValueError(
            f"{os.path.basename(path)} is not a keras_ddpm model.\nIt holds a keras.Sequential."
        )

    # As keras_ddpm.load_model does for a foreign .keras file.
    monkeypatch.setattr(diffusion_model, "load_model", refuse)
    with pytest.raises(SystemExit) as exited:
        demo, _ = sample_app.main(["--model", model_path, "--port", str(free_port())], block=False)
        demo.close()  # not reached unless the app served the model
    message = exited.value.code
    assert (
        isinstance(message, str)
        and "tiny.keras is not a keras_ddpm model." in message
        and "\n" not in message
    )


def test_uploads_are_converted_like_the_data_pipeline(app, model_path, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    rgba = np.random.default_rng(0).integers(0, 256, (30, 44, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    (pipeline,) = sampling_modes.load_real_images(str(folder), [0], 16, 1)
    np.testing.assert_array_equal(
        sample_request.load_image_file(str(folder / "a.png"), 16, 1), pipeline
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="Could not read broken.png as an image"):
        app.sample(**form(model_path, mode="inpainting", upload1=str(broken)))
    grid, _, _, settings, command = app.sample(
        **form(model_path, mode="interpolation", upload1=str(folder / "a.png"), n_points=3.0)
    )
    assert (
        np.asarray(Image.open(grid)).shape
        == make_grid(np.zeros((5, 16, 16, 1), np.uint8), ncols=5).shape[:2]
    )
    assert (
        '"uploads": [\n    true,\n    false\n  ]' in settings and "--dataset UPLOADS_DIR" in command
    )


def test_registry_lists_only_given_and_shipped_models(model_path, tmp_path):
    shipped = tmp_path / "saved_models"
    shipped.mkdir()
    shutil.copy(model_path, shipped / "shipped.keras")
    (tmp_path / "other.keras").write_bytes(b"not loaded")
    registry = sample_app.ModelRegistry([model_path], saved_models=str(shipped))
    assert registry.paths == [
        os.path.realpath(model_path),
        os.path.realpath(shipped / "shipped.keras"),
    ]
    assert registry.describe(registry.paths[1])["classes"] == 10
    for path in (str(tmp_path / "other.keras"), str(shipped / ".." / "other.keras"), None):
        with pytest.raises(ValueError, match="Choose one of the listed models"):
            registry.load(path)
    with pytest.raises(FileNotFoundError):
        sample_app.ModelRegistry([str(tmp_path / "missing.keras")])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grid_pixels(page, previous_src=None):
    """Waits for the Samples image (a new one when `previous_src` is given): (src, pixels,
    natural size)."""
    page.wait_for_function(
        "prev => { const i = document.querySelector('#grid img'); return i && i.complete && "
        "i.naturalWidth > 0 && i.src !== prev; }",
        arg=previous_src,
        timeout=120_000,
    )
    # the event is over
    page.locator('#grid [data-testid="status-tracker"].hide').wait_for(state="attached")
    src = page.locator("#grid img").get_attribute("src")
    size = page.evaluate(
        "() => { const i = document.querySelector('#grid img'); return [i.naturalWidth, "
        "i.naturalHeight]; }"
    )
    body = page.request.get(src).body()
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"grid_{time.monotonic_ns()}.png")
    with open(path, "wb") as f:
        f.write(body)
    return src, np.asarray(Image.open(path)), tuple(size)


def set_number(page, elem_id, value):
    page.locator(f"#{elem_id} input").fill(str(value))
    page.locator(f"#{elem_id} input").blur()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (`apt-get install chromium`)"
)
def test_app_in_a_real_browser(model_path, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    hold, release, sample = threading.Event(), threading.Event(), sample_app.SamplingApp.sample

    def held_sample(self, *values, progress=None):
        def report(value, **kwargs):
            progress(value, **kwargs)
            if hold.is_set() and value == (2, STEPS):
                release.wait(60)

        return sample(self, *values, progress=report)

    monkeypatch.setattr(sample_app.SamplingApp, "sample", held_sample)
    demo, url = sample_app.main(
        ["--model", model_path, "--port", str(free_port()), "--max-images", "64"], block=False
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#generate").wait_for()
            assert (
                "tiny.keras" in page.locator("#models").inner_text()
                and "177,553" in page.locator("#models").inner_text()
            )
            set_number(page, "steps", STEPS)
            set_number(page, "num_images", 10)
            set_number(page, "seed", 1)
            page.locator("#generate").click()
            src1, first, size = grid_pixels(page)
            # 10 tiles of 16x16 in one row (a column per class), 2-pixel padding.
            assert size == (10 * 18 + 2, 20) and first.shape == (20, 182)
            assert "--seed 1" in page.locator("#command").inner_text()
            screenshot = os.environ.get("KERAS_DDPM_SCREENSHOT") or str(tmp_path / "app.png")
            os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
            page.screenshot(path=screenshot, full_page=True)

            set_number(page, "seed", 2)
            page.locator("#generate").click()
            src2, second, _ = grid_pixels(page, src1)
            assert second.shape == first.shape and np.abs(second.astype(int) - first).mean() > 5

            set_number(page, "seed", 1)
            page.locator("#generate").click()
            _, third, _ = grid_pixels(page, src2)
            np.testing.assert_array_equal(third, first)

            # A request in progress shows its denoising step, and other requests (the random-seed
            # button, here from a second user) do not wait for it: the test holds it at step 2.
            src3 = page.locator("#grid img").get_attribute("src")
            set_number(page, "seed", 3)
            hold.set()
            page.locator("#generate").click()
            progress = page.get_by_text(f"denoising step 2/{STEPS}").first
            progress.wait_for(timeout=60_000)
            other = browser.new_page()
            other.goto(url)
            other.locator("#random_seed").click()
            other.wait_for_function(
                "() => document.querySelector('#seed input').value !== '0'", timeout=10_000
            )
            assert progress.is_visible() and page.locator("#grid img").get_attribute("src") == src3
            release.set()
            _, held, _ = grid_pixels(page, src3)  # the run finishes (a new seed: a new image)
            assert held.shape == first.shape

            set_number(page, "steps", 0)
            page.locator("#generate").click()
            page.get_by_text("Steps must be a whole number from 1 to 100").first.wait_for(
                timeout=30_000
            )
            assert "Traceback" not in page.content()
            browser.close()
    finally:
        demo.close()
