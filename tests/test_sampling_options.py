"""keras_ddpm.sampling_options: the one definition of the sampling options, and what is built
from it (the samplers, `SampleRequest`, the options of `python cli.py sample` and `eval`)."""

import dataclasses
import os
import subprocess
import sys

import pytest

from keras_ddpm import sampling_options as options
from keras_ddpm.cli import cli

pytestmark = pytest.mark.once  # Keras-free tables and parsing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = options.CHAIN_OPTIONS  # of sample and eval
assert SHARED == ("sampler", "steps", "eta", "skip", "variance", "guidance", "seed", "use_ema")


def test_the_options_and_the_cli_import_no_keras():
    # What `python cli.py --help` imports: no Keras, TensorFlow, JAX, torch or NumPy.
    code = (
        "import sys, keras_ddpm.sampling_options, keras_ddpm.cli; "
        "print([m for m in ('keras', 'tensorflow', 'jax', 'torch', 'numpy') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_defaults_by_mode_and_sampler():
    samplers = {m: options.default_sampler(m) for m in options.MODES}
    assert samplers == {
        "normal": "ddim",
        "denoising_process": "ddim",
        "interpolation": "ddim",
        "coarse_to_fine": "ddpm",
        "sequence": "ddim",
        "inpainting": "ddpm",
    }
    steps = {s: options.default_steps(s) for s in options.SAMPLERS}
    assert steps == {"ddim": 50, "ddpm": 50, "dpm_solver": 20}
    skips = {s: options.default_skip(s) for s in options.SAMPLERS}
    assert skips == {"ddim": "uniform", "ddpm": "linspace", "dpm_solver": "logsnr"}
    defaults = options.DEFAULTS
    assert defaults.sampler is None and defaults.steps is None and defaults.skip is None


def test_the_tables_name_every_mode_and_sampler_and_nothing_else():
    modes = set(options.MODES)
    assert set(options.MODE_LABELS) == set(options.MODE_OPTIONS) == modes and len(modes) == 6
    assert set(options.STOCHASTIC_MODES) <= modes and set(options.REAL_IMAGE_MODES) <= modes
    assert set(options.DEFAULT_FRAMES) <= modes
    assert all("n_frames" in options.MODE_OPTIONS[m] for m in options.DEFAULT_FRAMES)
    assert all("dataset" in options.MODE_OPTIONS[m] for m in options.REAL_IMAGE_MODES)
    assert tuple(options.DEFAULT_STEPS) == tuple(options.DEFAULT_SKIPS) == options.SAMPLERS
    assert set(options.DEFAULT_SKIPS.values()) <= set(options.SKIPS)
    assert options.CROP_CHOICES == ("auto", *options.CROPS)
    fields = {f.name for f in dataclasses.fields(options.SamplingOptions)}
    names = set(options.COMMON_OPTIONS).union(*options.MODE_OPTIONS.values())
    assert names <= fields


def test_ignored_options_come_from_the_table():
    ignored = options.ignored_options
    given = {"eta", "variance", "guidance", "class_label"}
    assert ignored({"sampler": "ddpm"}, given) == [
        ("eta", "only the ddim sampler has an eta, not ddpm")
    ]
    assert ignored({"sampler": "ddim"}, given, conditional=False) == [
        ("variance", "only the ddpm sampler draws with a variance, not ddim"),
        ("guidance", "the model is unconditional"),
        ("class_label", "the model is unconditional"),
    ]
    assert [name for name, _ in ignored({"sampler": "dpm_solver"}, given, True)] == [
        "eta",
        "variance",
    ]
    assert ignored({"sampler": "ddpm"}, {"variance", "guidance"}, conditional=True) == []
    assert ignored({"sampler": "ddpm"}, set(), conditional=False) == []  # only what was given
    for option, setting, values, _ in options.IGNORED_OPTIONS:
        assert option in options.COMMON_OPTIONS and option in given
        assert setting == "conditional" or set(values) < set(options.SAMPLERS)


@pytest.mark.parametrize(
    "batch_size, classes, drawn",
    [(16, 10, 10), (20, 10, 20), (29, 10, 20), (6, 10, 6), (16, 0, 16), (7, 7, 7), (5, 2, 4)],
)
def test_class_grids_fill_their_rows(batch_size, classes, drawn):
    assert options.class_grid_size(batch_size, classes) == drawn
    if classes:
        columns = min(drawn, classes)
        assert drawn % columns == 0  # whole rows: no empty slot


@pytest.mark.parametrize(
    "text, expected",
    [
        ("999,500,100", (999, 500, 100)),
        (" 50 , 7 ", (50, 7)),
        ("3", (3,)),
        ("", None),
        ("  ", None),
        (None, None),
    ],
)
def test_coarse_timesteps_parse(text, expected):
    assert options.parse_coarse_timesteps(text) == expected


def test_bad_coarse_timesteps_are_one_sentence():
    message = r"^Coarse-to-fine timesteps are comma-separated whole numbers\. Received: '9,x'$"
    with pytest.raises(ValueError, match=message):
        options.parse_coarse_timesteps("9,x")


def test_from_options_takes_the_sampling_options_of_a_larger_mapping():
    command = {"steps": 7, "save_path": "x.png", "mode": "sequence"}
    picked = options.SamplingOptions.from_options(command, seed=3)
    assert picked == options.SamplingOptions(mode="sequence", steps=7, seed=3)


def test_the_library_uses_the_same_names():
    from keras_ddpm import samplers
    from keras_ddpm.sample_request import SampleRequest

    assert samplers.SAMPLERS is options.SAMPLERS and samplers.SKIPS is options.SKIPS
    assert samplers.VARIANCES is options.VARIANCES
    assert issubclass(SampleRequest, options.SamplingOptions)
    names = [f.name for f in dataclasses.fields(SampleRequest)]
    assert names == [f.name for f in dataclasses.fields(options.SamplingOptions)]
    assert SampleRequest() == SampleRequest(**dataclasses.asdict(options.DEFAULTS))


def test_sample_and_eval_have_the_same_sampling_options():
    params = {name: {p.name: p for p in cli.commands[name].params} for name in ("sample", "eval")}
    for name in SHARED:
        sample, evaluate = params["sample"][name], params["eval"][name]
        assert sample.default == evaluate.default == getattr(options.DEFAULTS, name), name
        choices = [getattr(p.type, "choices", None) for p in (sample, evaluate)]
        assert choices[0] == choices[1], name
    assert tuple(params["eval"]["skip"].type.choices) == (
        "uniform",
        "quadratic",
        "linspace",
        "trailing",
        "logsnr",
    )
    assert tuple(params["eval"]["skip"].type.choices) == options.SKIPS
    assert tuple(params["eval"]["sampler"].type.choices) == options.SAMPLERS
    assert tuple(params["sample"]["mode"].type.choices) == options.MODES
    assert tuple(params["sample"]["variance"].type.choices) == options.VARIANCES
    spaces = params["sample"]["interpolation_space"].type.choices
    assert tuple(spaces) == options.INTERPOLATION_SPACES
    assert tuple(params["eval"]["crop"].type.choices) == options.CROP_CHOICES
    (train_crop,) = [p for p in cli.commands["train"].params if p.name == "crop"]
    assert tuple(train_crop.type.choices) == options.CROP_CHOICES
    # Every option a request writes into its command line is one of `sample`'s.
    names = set(options.COMMON_OPTIONS).union(*options.MODE_OPTIONS.values())
    assert names <= set(params["sample"])
    for name in names - {"coarse_timesteps"}:  # the CLI reads coarse_timesteps as text
        assert params["sample"][name].default == getattr(options.DEFAULTS, name), name
