"""The sampling app (apps/sample_app.py): its request handling, and the real app driven in
headless Chromium (Debian's `chromium` through PyPI's `playwright`).

KERAS_DDPM_SCREENSHOT=PATH keeps the browser test's screenshot there (otherwise it goes to a
temporary folder); the README's screenshot of the shipped model is `docs/make_figures.py --app`."""

import os
import shlex
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import randomize_weights
from PIL import Image

from keras_ddpm import DiffusionModel
from keras_ddpm import get_preset
from keras_ddpm import sample_request
from keras_ddpm import sampling_modes
from keras_ddpm.images import make_grid

gradio = pytest.importorskip("gradio")
from apps import sample_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
STEPS = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A class-conditional tiny model with random weights (so different seeds draw different images)."""
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    randomize_weights(DiffusionModel(get_preset("tiny").replace(num_classes=10))).save(path)
    return str(path)


@pytest.fixture(scope="module")
def app(model_path, tmp_path_factory):
    registry = sample_app.ModelRegistry([model_path], saved_models=str(tmp_path_factory.mktemp("empty")))
    return sample_app.SamplingApp(registry, max_images=64, work_dir=str(tmp_path_factory.mktemp("results")))


def form(path, **values):
    """The form's values in `SamplingApp.sample`'s order (the UI's defaults, then `values`)."""
    defaults = dict(
        model_path=path, mode="normal", sampler="ddim", steps=STEPS, eta=0.0, guidance=0.0, class_label=sample_app.ALL_CLASSES,
        seed=0.0, num_images=10.0, n_frames=20.0, upload1=None, index1=0.0, upload2=None, index2=1.0, interpolate_at=None,
        n_points=10.0, space="pixel", coarse_timesteps="", mask="",
    )  # fmt: skip
    return {**defaults, **values}


def test_result_is_what_its_cli_command_draws(app, model_path, tmp_path, monkeypatch):
    reported = []
    grid, gif, files, settings, command = app.sample(**form(model_path, seed=7.0, num_images=6.0, class_label="3"),
                                                     progress=lambda value, **_: reported.append(value))  # fmt: skip
    assert reported == [(step, STEPS) for step in range(STEPS + 1)]  # every denoising step
    assert gif is None and [os.path.basename(f) for f in files] == ["samples.png", "tiles.zip", "settings.json"]
    assert '"seed": 7' in settings and '"class_label": 3' in settings
    pixels = np.asarray(Image.open(grid))
    assert pixels.shape == make_grid(np.zeros((6, 16, 16, 1), np.uint8)).shape[:2]  # 3 x 2 tiles
    monkeypatch.chdir(tmp_path)
    from cli import cli

    args = shlex.split(command)
    assert args[:3] == ["python", "cli.py", "sample"] and "--class-label" in args
    result = CliRunner().invoke(cli, args[2:])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "samples.png")), pixels)


def test_commands_name_the_modes_options(app, model_path):
    from cli import cli

    model = app.registry.load(model_path)
    request = sample_request.SampleRequest(mode="coarse_to_fine", steps=5, seed=3, batch_size=4, coarse_timesteps=(50, 10), n_points=3)
    assert request.resolve(model).command("m.keras", "out.png") == (
        "python cli.py sample --model m.keras --mode coarse_to_fine --sampler ddpm --steps 5 --seed 3 --batch-size 4 "
        "--coarse-timesteps 50,10 --save-path out.png"
    )
    extra = {"interpolation": dict(image_idx2=4, interpolate_at=20, interpolation_space="latent"), "inpainting": dict(mask="0,0,8,8")}
    for mode in sampling_modes.MODES:
        request = sample_request.SampleRequest(mode=mode, eta=0.5, guidance=1.5, class_label=2, n_frames=3, **extra.get(mode, {}))
        args = shlex.split(request.resolve(model).command("m.keras", "out.png"))
        context = cli.commands["sample"].make_context("sample", args[3:])  # parses every option, runs nothing
        assert context.params["mode"] == mode and context.params["class_label"] == 2 and context.params["eta"] == 0.5


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


def test_uploads_are_converted_like_the_data_pipeline(app, model_path, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    rgba = np.random.default_rng(0).integers(0, 256, (30, 44, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    (pipeline,) = sampling_modes.load_real_images(str(folder), [0], 16, 1)
    np.testing.assert_array_equal(sample_request.load_image_file(str(folder / "a.png"), 16, 1), pipeline)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="Could not read broken.png as an image"):
        app.sample(**form(model_path, mode="inpainting", upload1=str(broken)))
    grid, _, _, settings, command = app.sample(**form(model_path, mode="interpolation", upload1=str(folder / "a.png"), n_points=3.0))
    assert np.asarray(Image.open(grid)).shape == make_grid(np.zeros((5, 16, 16, 1), np.uint8), ncols=5).shape[:2]
    assert '"uploads": [\n    true,\n    false\n  ]' in settings and "--dataset UPLOADS_DIR" in command


def test_registry_lists_only_given_and_shipped_models(model_path, tmp_path):
    shipped = tmp_path / "saved_models"
    shipped.mkdir()
    shutil.copy(model_path, shipped / "shipped.keras")
    (tmp_path / "other.keras").write_bytes(b"not loaded")
    registry = sample_app.ModelRegistry([model_path], saved_models=str(shipped))
    assert registry.paths == [os.path.realpath(model_path), os.path.realpath(shipped / "shipped.keras")]
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
    """Waits for the Samples image (a new one when `previous_src` is given): (src, pixels, natural size)."""
    page.wait_for_function(
        "prev => { const i = document.querySelector('#grid img'); return i && i.complete && i.naturalWidth > 0 && i.src !== prev; }",
        arg=previous_src, timeout=120_000,
    )  # fmt: skip
    page.locator('#grid [data-testid="status-tracker"].hide').wait_for(state="attached")  # the event is over
    src = page.locator("#grid img").get_attribute("src")
    size = page.evaluate("() => { const i = document.querySelector('#grid img'); return [i.naturalWidth, i.naturalHeight]; }")
    body = page.request.get(src).body()
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"grid_{time.monotonic_ns()}.png")
    with open(path, "wb") as f:
        f.write(body)
    return src, np.asarray(Image.open(path)), tuple(size)


def set_number(page, elem_id, value):
    page.locator(f"#{elem_id} input").fill(str(value))
    page.locator(f"#{elem_id} input").blur()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (`apt-get install chromium`)")
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
    demo, url = sample_app.main(["--model", model_path, "--port", str(free_port()), "--max-images", "64"], block=False)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#generate").wait_for()
            assert "tiny.keras" in page.locator("#models").inner_text() and "177,553" in page.locator("#models").inner_text()
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
            other.wait_for_function("() => document.querySelector('#seed input').value !== '0'", timeout=10_000)
            assert progress.is_visible() and page.locator("#grid img").get_attribute("src") == src3
            release.set()
            _, held, _ = grid_pixels(page, src3)  # the run finishes (a new seed: a new image)
            assert held.shape == first.shape

            set_number(page, "steps", 0)
            page.locator("#generate").click()
            page.get_by_text("Steps must be a whole number from 1 to 100").first.wait_for(timeout=30_000)
            assert "Traceback" not in page.content()
            browser.close()
    finally:
        demo.close()
