"""keras_ddpm's command line: train, sample, evaluate, inspect and export diffusion models.

    python cli.py train --dataset mnist_5k --preset mnist --out runs/mnist
    python cli.py sample --model runs/mnist/model.keras --save-path samples.png
    python cli.py eval --model runs/mnist/model.keras --dataset mnist_5k:test
    python cli.py info --preset ddpm_cifar10

(`keras-ddpm ...` where the package is installed.) Each command parses its options into the
library's configuration (`RunConfig`, `SampleRequest`, `EvalConfig`), calls the library and turns
the result into messages and an exit status. Keras loads inside the commands, so `--help` is quick.
"""

import dataclasses
import functools
import json
import math
import os
import sys
import time

import click
from click.core import ParameterSource

from keras_ddpm import preflight
from keras_ddpm import sampling_options
from keras_ddpm.errors import describe_error
from keras_ddpm.evaluation import FEATURES
from keras_ddpm.evaluation import RESIZES
from keras_ddpm.evaluation import EvalConfig
from keras_ddpm.quiet import quiet_framework_logs
from keras_ddpm.run_config import RunConfig
from keras_ddpm.saving import CONVERTED_WEIGHTS
from keras_ddpm.saving import default_model_path
from keras_ddpm.saving import load_model_file

RUN = RunConfig()  # the defaults of `train`
SAMPLING = sampling_options.DEFAULTS  # of `sample` and of the sampling of `eval`
EVAL = EvalConfig()  # of `eval`


def user_errors(command=None, check=None):
    """The command's error boundary: an error a user can cause (a bad value, file or folder, a
    full disk: `ValueError`, `OSError`) becomes one `Error:` sentence and exit status 1; any other
    exception one line too, naming `-v`, which shows its traceback.

    `check(options)` (a `keras_ddpm.preflight` function) runs first, before Keras, TensorFlow or
    a model loads, so a mistaken command answers at once. `@user_errors` or
    `@user_errors(check=...)`."""
    if command is None:
        return functools.partial(user_errors, check=check)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            if check is not None:
                check(kwargs)
        except (ValueError, OSError) as error:
            raise click.ClickException(describe_error(error)) from None
        if not click.get_current_context().find_root().params.get("show_traceback"):
            quiet_framework_logs()  # before Keras loads TensorFlow
        from keras_ddpm import backend  # here, not in the group: `COMMAND --help` loads no Keras

        backend.configure_xla_cpu()  # before any JAX computation
        try:
            return command(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except (ValueError, OSError) as error:
            raise click.ClickException(describe_error(error)) from None
        except Exception as error:
            if click.get_current_context().find_root().params.get("show_traceback"):
                raise
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {describe_error(error)} "
                "(`python cli.py -v ...` shows the traceback)"
            ) from None

    return wrapper


def folder_option(context, parameter, value):
    """A click callback: the value names a folder or nothing yet, not an existing file."""
    if value is not None and os.path.exists(value) and not os.path.isdir(value):
        raise click.BadParameter(f"{value} is a file; give a folder (it is created if missing).")
    return value


def warn_ignored(settings, given, conditional=None):
    """One `warning:` line on stderr for each option in `given` that the sampler or the model
    ignores (`sampling_options.ignored_options`); returns their names."""
    ignored = sampling_options.ignored_options(settings, given, conditional)
    for name, why in ignored:
        click.echo(f"warning: --{name.replace('_', '-')} is ignored: {why}.", err=True)
    return [name for name, _ in ignored]


def given_options(names):
    """Those of `names` (parameter names) that the command line sets."""
    context = click.get_current_context()
    return {n for n in names if context.get_parameter_source(n) == ParameterSource.COMMANDLINE}


class SuggestingChoice(click.Choice):
    """`click.Choice` whose error also names the closest choices ("did you mean 'mnist'?")."""

    def get_invalid_choice_message(self, value, ctx):
        import difflib

        message = super().get_invalid_choice_message(value, ctx)
        close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=2)
        if close:
            message += f" Did you mean {' or '.join(repr(c) for c in close)}?"
        return message


class FiniteFloat(click.FloatRange):
    """`click.FloatRange` that also refuses nan and inf (they compare false with any bound)."""

    name = "float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


def run_option_type(name):
    """The click type of `RunConfig` option `name`: its `Limit` (choices, or a bounded number)."""
    limit = RunConfig.limit(name)
    if limit.choices is not None:
        return SuggestingChoice(limit.choices)
    bounds = dict(min=limit.low, max=limit.high, min_open=limit.low_open, max_open=limit.high_open)
    if limit.kind is float:
        return FiniteFloat(**bounds)
    if limit.kind is int:
        return click.IntRange(**bounds) if limit.low is not None or limit.high is not None else int
    return None  # a string


def sampling_click_options(**help_texts):
    """The sampling options of `sample` and `eval`: their choices and defaults are
    `keras_ddpm.sampling_options`'; `help_texts` replace the help of the options they name."""
    stochastic = " and ".join(sampling_options.STOCHASTIC_MODES)
    steps = ", ".join(f"{n} for {s}" for s, n in sampling_options.DEFAULT_STEPS.items())
    skips = ", ".join(f"{k} for {s}" for s, k in sampling_options.DEFAULT_SKIPS.items())
    helps = {
        "sampler": f"[default: ddpm for {stochastic}, ddim otherwise]",
        "steps": f"Denoising steps [default: {steps}].",
        "eta": f"DDIM eta, 0 (deterministic) to {sampling_options.MAX_ETA:g} (DDPM's noise).",
        "skip": (
            "Timestep spacing: uniform = DDIM's range(0, T, T//S) (= diffusers' DDIM default, so "
            "DDIM's Table 1 reproduces), quadratic = DDIM's, linspace / trailing = diffusers', "
            f"logsnr = DPM-Solver's [default: {skips}]."
        ),
        "variance": "DDPM variance [default: the model's: fixed_small, or an imported "
        "checkpoint's authors' choice].",
        "guidance": "Classifier-free guidance weight w >= 0 (0: plain conditional sampling).",
        "seed": None,
        **help_texts,
    }
    options = [
        click.option(
            "--sampler",
            type=SuggestingChoice(sampling_options.SAMPLERS),
            default=SAMPLING.sampler,
            help=helps["sampler"],
        ),
        click.option(
            "--steps", type=click.IntRange(min=1), default=SAMPLING.steps, help=helps["steps"]
        ),
        click.option(
            "--eta",
            type=FiniteFloat(min=0),
            default=SAMPLING.eta,
            show_default=True,
            help=helps["eta"],
        ),
        click.option(
            "--allow-eta-above-1",
            is_flag=True,
            help=f"Accept --eta above {sampling_options.MAX_ETA:g} (more noise than DDPM's).",
        ),
        click.option(
            "--skip",
            type=SuggestingChoice(sampling_options.SKIPS),
            default=SAMPLING.skip,
            help=helps["skip"],
        ),
        click.option(
            "--variance",
            type=SuggestingChoice(sampling_options.VARIANCES),
            default=None,  # the model's (`SampleRequest.resolve`)
            help=helps["variance"],
        ),
        click.option(
            "--guidance",
            type=FiniteFloat(min=0),
            default=SAMPLING.guidance,
            show_default=True,
            help=helps["guidance"],
        ),
        click.option(
            "--seed", type=int, default=SAMPLING.seed, show_default=True, help=helps["seed"]
        ),
        click.option(
            "--ema/--no-ema",
            "use_ema",
            default=SAMPLING.use_ema,
            show_default=True,
            help="Sample with the EMA weights (what the papers report) or, --no-ema, the trained "
            "ones (early in a run the EMA is still close to the initial weights).",
        ),
    ]

    def decorate(command):
        for option in reversed(options):  # click lists options in the order they are applied
            command = option(command)
        return command

    return decorate


@click.group()
@click.option(
    "-v",
    "--traceback",
    "show_traceback",
    is_flag=True,
    help="Verbose: show the traceback of an unexpected error and TensorFlow's start-up logs.",
)
def cli(show_traceback):
    """Denoising diffusion models (DDPM, DDIM) in Keras 3 on TensorFlow, PyTorch and JAX."""


def main():
    """`python cli.py ...` and the `keras-ddpm` console script."""
    cli()


@cli.command()
@click.option(
    "--dataset",
    default=RUN.dataset,
    show_default=True,
    help="mnist_5k, a tfds image dataset ('celeb_a', 'cifar10:train'...) or a folder of images.",
)
@click.option(
    "--data-dir",
    "--data_dir",
    "data_dir",
    default=RUN.data_dir,
    help="tfds data directory [default: ~/tensorflow_datasets].",
)
@click.option(
    "--image-size",
    "--image_size",
    "image_size",
    type=run_option_type("image_size"),
    default=RUN.image_size,
    help="Training image size [default: the preset's].",
)
@click.option(
    "--crop",
    type=run_option_type("crop"),
    default=RUN.crop,
    show_default=True,
    help="auto: DDIM's CelebA crop for celeb_a, the centred square otherwise.",
)
@click.option(
    "--flip/--no-flip",
    default=RUN.flip,
    help="Random horizontal flips [default: the preset's; off for digits].",
)
@click.option(
    "--cache",
    default=RUN.cache,
    show_default=True,
    help="Cache decoded images: auto (in memory up to 2 GiB), memory, none, or a folder for "
    "cache files.",
)
@click.option(
    "--preset",
    type=run_option_type("preset"),
    default=RUN.preset,
    show_default=True,
    help="Model preset (`info --preset NAME` shows one).",
)
@click.option(
    "--steps",
    type=run_option_type("steps"),
    default=RUN.steps,
    help="Total training steps [default: the preset's].",
)
@click.option(
    "--batch-size",
    "--batch_size",
    "batch_size",
    type=run_option_type("batch_size"),
    default=RUN.batch_size,
    help="Global batch size, split across devices [default: the preset's].",
)
@click.option(
    "--optimizer", type=run_option_type("optimizer"), default=RUN.optimizer, help="[default: adam]"
)
@click.option(
    "--weight-decay",
    type=run_option_type("weight_decay"),
    default=RUN.weight_decay,
    help="AdamW's decoupled weight decay [default: 0].",
)
@click.option(
    "--lr",
    type=run_option_type("lr"),
    default=RUN.lr,
    help="Peak learning rate [default: the preset's].",
)
@click.option(
    "--lr-schedule",
    type=run_option_type("lr_schedule"),
    default=RUN.lr_schedule,
    help="After warm-up: constant (DDPM) or cosine decay to 0 [default: constant].",
)
@click.option(
    "--warmup-steps",
    type=run_option_type("warmup_steps"),
    default=RUN.warmup_steps,
    help="Linear warm-up steps [default: the preset's].",
)
@click.option(
    "--grad-clip",
    type=run_option_type("grad_clip"),
    default=RUN.grad_clip,
    help="Clip gradients to this global norm; 0: off [default: the preset's, 1.0].",
)
@click.option(
    "--grad-accum",
    type=run_option_type("grad_accum"),
    default=RUN.grad_accum,
    help="Split each batch into K micro-batches whose gradients are averaged before the "
    "optimizer and EMA step: the same update as the whole --batch-size, with the activation "
    "memory of one micro-batch [default: 1].",
)
@click.option(
    "--ema-decay",
    type=run_option_type("ema_decay"),
    default=RUN.ema_decay,
    help="[default: the preset's]",
)
@click.option(
    "--ema-warmup-power",
    type=run_option_type("ema_warmup_power"),
    default=RUN.ema_warmup_power,
    help="EMA warm-up: decay min(ema_decay, 1 - (1 + step)^-p); 2/3 or 3/4 are usual; 0: off "
    "[default: 0].",
)
@click.option(
    "--prediction",
    type=run_option_type("prediction"),
    default=RUN.prediction,
    help="Network target [default: epsilon].",
)
@click.option(
    "--snr-gamma",
    type=run_option_type("snr_gamma"),
    default=RUN.snr_gamma,
    help="Min-SNR-gamma loss weighting (Hang et al. 2023): each example's error weighted by "
    "min(SNR, gamma) / SNR (epsilon target); 5 is the paper's; 0: off [default: the preset's].",
)
@click.option(
    "--schedule",
    type=run_option_type("schedule"),
    default=RUN.schedule,
    help="Noise schedule [default: linear].",
)
@click.option(
    "--class-cond/--no-class-cond",
    default=RUN.class_cond,
    show_default=True,
    help="Condition on the dataset's labels (with label dropout for classifier-free guidance).",
)
@click.option(
    "--mixed-precision",
    type=run_option_type("mixed_precision"),
    default=RUN.mixed_precision,
    show_default=True,
    help="bf16 or fp16 compute (fp16 with dynamic loss scaling); weights, loss and schedule stay "
    "float32.",
)
@click.option(
    "--jit-compile/--no-jit-compile",
    default=RUN.jit_compile,
    help="XLA [default: on for JAX and for TensorFlow with a GPU].",
)
@click.option(
    "--steps-per-execution",
    type=run_option_type("steps_per_execution"),
    default=RUN.steps_per_execution,
    show_default=True,
    help="Steps between callbacks (TensorFlow, JAX); TensorFlow compiles them into one call.",
)
@click.option(
    "--cuda-graph",
    type=run_option_type("cuda_graph"),
    default=RUN.cuda_graph,
    help="PyTorch on CUDA: capture the training step as one CUDA graph after 3 warm-up steps "
    "(auto); on: also say why not elsewhere; off: eager steps [default: the preset's, auto].",
)
@click.option(
    "--distribute",
    type=run_option_type("distribute"),
    default=RUN.distribute,
    show_default=True,
    help="Data parallel on all local devices: mirrored (TensorFlow) or data_parallel (JAX); "
    "multi_worker: across processes started by a launcher (docs/multi_worker.md).",
)
@click.option("--seed", type=run_option_type("seed"), default=RUN.seed, show_default=True)
@click.option(
    "--out",
    "out_dir",
    default=RUN.out_dir,
    show_default=True,
    callback=folder_option,
    help="Run directory: model.keras, checkpoints/, metrics.csv, logs/, samples/, config.json.",
)
@click.option(
    "--resume",
    is_flag=True,
    default=RUN.resume,
    help="Continue from the newest checkpoint in OUT that loads (options default to "
    "OUT/config.json's, which must exist).",
)
@click.option(
    "--checkpoint-every",
    type=run_option_type("checkpoint_every"),
    default=RUN.checkpoint_every,
    show_default=True,
    help="Steps between checkpoints.",
)
@click.option(
    "--keep-checkpoints",
    type=run_option_type("keep_checkpoints"),
    default=RUN.keep_checkpoints,
    show_default=True,
    help="How many of the newest checkpoints to keep.",
)
@click.option(
    "--log-every",
    type=run_option_type("log_every"),
    default=RUN.log_every,
    show_default=True,
    help="Steps between rows of OUT/metrics.csv and TensorBoard scalars; their loss is the mean "
    "of those steps (the progress bar's is the mean since this session's first step).",
)
@click.option(
    "--sample-every",
    type=run_option_type("sample_every"),
    default=RUN.sample_every,
    show_default=True,
    help="Steps between EMA sample grids in OUT/samples, and one of the last step (0: never).",
)
@click.option(
    "--sample-steps",
    type=run_option_type("sample_steps"),
    default=RUN.sample_steps,
    show_default=True,
    help="DDIM steps of the sample grids.",
)
@click.option(
    "--verbose",
    type=run_option_type("verbose"),
    default=RUN.verbose,
    show_default=True,
    help="0: quiet; 1: a progress bar (its loss: the mean since this session's first step).",
)
@click.option(
    "--fid-every",
    type=run_option_type("fid_every"),
    default=RUN.fid_every,
    show_default=True,
    help="Measure FID/KID every N steps (0: never); logged to history, OUT/metrics.csv and "
    "OUT/logs.",
)
@click.option(
    "--fid-samples",
    type=run_option_type("fid_samples"),
    default=RUN.fid_samples,
    show_default=True,
    help="Images generated (and real images used) per FID.",
)
@click.option(
    "--fid-steps",
    type=run_option_type("fid_steps"),
    default=RUN.fid_steps,
    show_default=True,
    help="DDIM steps of the FID samples.",
)
@click.option(
    "--fid-features",
    type=run_option_type("fid_features"),
    default=RUN.fid_features,
    show_default=True,
    help="FID network: the 2015 TF Inception of published FIDs, or Keras' ImageNet InceptionV3.",
)
@click.option(
    "--fid-resize",
    type=run_option_type("fid_resize"),
    default=RUN.fid_resize,
    show_default=True,
    help="Resizing to 299x299 for FID, as clean-fid, pytorch-fid or the TF graph does it.",
)
@click.option(
    "--inception-weights",
    default=RUN.inception_weights,
    help="A local weights file of the FID network [default: its published weights, downloaded "
    "once into ~/.keras/models].",
)
@user_errors(check=preflight.check_train)
def train(**options):
    """Train a model (checkpointed, resumable) and save it to OUT/model.keras."""
    from keras_ddpm import backend
    from keras_ddpm import training
    from keras_ddpm.backend import WorkerLostError
    from keras_ddpm.callbacks import NonFiniteLossError
    from keras_ddpm.checkpoints import RunInUseError

    context = click.get_current_context()
    given = {n for n in options if context.get_parameter_source(n) == ParameterSource.COMMANDLINE}
    config = RunConfig(**options)
    try:
        result = training.run(config, explicit=given, echo=click.echo)
    except RunInUseError as error:
        raise click.ClickException(str(error)) from None
    except WorkerLostError as error:
        click.echo(f"Error: {error}", err=True)
        backend.exit_after_lost_worker(1)
    except NonFiniteLossError as error:
        raise click.ClickException(
            f"{error} Lower --lr or check the data, then --resume."
        ) from None
    if result.interrupted:
        click.echo(
            f"stopped at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint}. "
            f"Continue with: python cli.py train --out {config.out_dir} --resume"
        )
        sys.exit(130)
    loss = result.final_loss
    trained = (
        f"final loss {loss:.4f}" if loss is not None else f"already trained to step {result.step}"
    )
    saved = f"model saved to {result.model_path}" if result.model_path else "the chief saves"
    click.echo(f"{trained}; {saved}")


@cli.command()
@click.option(
    "--model",
    "--model_params",
    "model_path",
    default=None,
    help="A .keras file written by `train` [default: the model in saved_models/].",
)
@click.option(
    "--mode",
    type=SuggestingChoice(sampling_options.MODES),
    default=SAMPLING.mode,
    show_default=True,
)
@sampling_click_options()
@click.option(
    "--batch-size",
    "--batch_size",
    "batch_size",
    type=click.IntRange(1, sampling_options.MAX_IMAGES),
    default=SAMPLING.batch_size,
    show_default=True,
    help="Images per grid (normal, denoising_process, sequence) or samples (coarse_to_fine, "
    "inpainting). A class-conditional normal or denoising_process grid without --class-label "
    "has a column per class and fills its rows: batch_size // classes full rows (16 images of 10 "
    "classes: one row of 10), or one row of the first batch_size classes.",
)
@click.option(
    "--class-label",
    "--class_label",
    "class_label",
    type=int,
    default=SAMPLING.class_label,
    help="Class to draw (class-conditional models) [default: a column per class].",
)
@click.option(
    "--padding",
    type=click.IntRange(min=0),
    default=SAMPLING.padding,
    show_default=True,
    help="Pixels between grid tiles.",
)
@click.option(
    "--img-size",
    "--img_size",
    "img_size",
    type=int,
    default=None,
    help="Checked against the model's image size.",
)
@click.option(
    "--save-path",
    "--save_path",
    "save_path",
    default=None,
    help="Output image: .png, .jpg, .webp, .bmp, .gif or .tif; denoising_process: .gif, .png, "
    ".webp or .tif [default: samples/samples.gif for denoising_process, samples/samples.png "
    "otherwise; the folder is created].",
)
@click.option(
    "--save-dir",
    "--save_dir",
    "save_dir",
    default=None,
    callback=folder_option,
    help="normal mode: write --n-images single PNGs here instead of a grid (for FID tools).",
)
@click.option(
    "--n-images",
    "--n_images",
    "n_images",
    type=click.IntRange(min=1),
    default=None,
    help="With --save-dir: how many images [default: --batch-size].",
)
@click.option(
    "--n-frames",
    "--n_frames",
    "n_frames",
    type=click.IntRange(min=2),
    default=SAMPLING.n_frames,
    help="Frames of denoising_process / columns of sequence [default: "
    + ", ".join(f"{n} for {mode}" for mode, n in sampling_options.DEFAULT_FRAMES.items())
    + "].",
)
@click.option(
    "--frame-ms",
    type=click.IntRange(min=1),
    default=SAMPLING.frame_ms,
    show_default=True,
    help="GIF frame duration.",
)
@click.option(
    "--hold-ms",
    type=click.IntRange(min=1),
    default=SAMPLING.hold_ms,
    show_default=True,
    help="How long the GIF holds its last frame.",
)
@click.option(
    "--dataset",
    default=SAMPLING.dataset,
    show_default=True,
    help="Real images for interpolation, coarse_to_fine, inpainting (as in `train`).",
)
@click.option(
    "--data-dir",
    "--data_dir",
    "data_dir",
    default=None,
    help="tfds data directory, or a folder of images used as the dataset.",
)
@click.option(
    "--image-idx1",
    "--image_idx1",
    "image_idx1",
    type=click.IntRange(min=0),
    default=SAMPLING.image_idx1,
    show_default=True,
    help="Index of the (first) real image.",
)
@click.option(
    "--image-idx2",
    "--image_idx2",
    "image_idx2",
    type=click.IntRange(min=0),
    default=SAMPLING.image_idx2,
    show_default=True,
    help="Index of the second real image (interpolation).",
)
@click.option(
    "--interpolate-at",
    "--interpolate_at",
    "interpolate_at",
    type=click.IntRange(min=0),
    default=SAMPLING.interpolate_at,
    help="Timestep t the images are noised to [default: T/2].",
)
@click.option(
    "--n-points",
    "--n_points",
    "n_points",
    type=click.IntRange(min=2),
    default=SAMPLING.n_points,
    show_default=True,
    help="Interpolation weights, 0 and 1 included.",
)
@click.option(
    "--interpolation-space",
    type=click.Choice(sampling_options.INTERPOLATION_SPACES),
    default=SAMPLING.interpolation_space,
    show_default=True,
    help="pixel: mix noised images at --interpolate-at; latent: slerp DDIM-inverted x_T.",
)
@click.option(
    "--coarse-timesteps",
    default=None,
    help="coarse_to_fine rows, e.g. '999,750,500,250,100,25' [default: T, 3T/4, T/2, T/4, T/10, "
    "T/40].",
)
@click.option(
    "--mask",
    default=SAMPLING.mask,
    help="inpainting: a box 'x0,y0,x1,y1' in pixels or a mask image (white = fill) [default: the "
    "central box of half the image size].",
)
@user_errors(check=preflight.check_sample)
def sample(**options):
    """Sample images from a trained model in one of six modes and save them (PNG/JPEG grid or
    GIF)."""
    from keras_ddpm import sample_request
    from keras_ddpm import sampling_modes as modes
    from keras_ddpm.images import load_mask
    from keras_ddpm.images import save_gif
    from keras_ddpm.images import save_image

    model = load_model_file(options["model_path"] or default_model_path())
    size = model.config.unet.image_size
    mode, mask = options["mode"], options["mask"]
    if options["img_size"] is not None and options["img_size"] != size:
        raise ValueError(
            f"--img-size {options['img_size']} does not match the model's image size {size}."
        )
    save_dir = options["save_dir"]  # preflight.check_sample has checked the options alone
    timesteps = sampling_options.parse_coarse_timesteps(options["coarse_timesteps"])
    fill_mask = None  # a mask image; a box stays in the request
    is_box = mask is not None and mask.replace(",", "").replace(" ", "").isdigit()
    if mode == "inpainting" and mask is not None and (os.path.isfile(mask) or not is_box):
        fill_mask = load_mask(mask, size)
    real_source, tfds_dir = preflight.real_image_source(options)
    sampler = options["sampler"] or sampling_options.default_sampler(mode)
    given = given_options(sampling_options.COMMON_OPTIONS)
    ignored = warn_ignored({"sampler": sampler}, given, conditional=bool(model.num_classes))
    request = sample_request.SampleRequest.from_options(
        options,
        dataset=real_source,
        coarse_timesteps=timesteps,
        mask=None if fill_mask is not None else mask,
        **{name: getattr(SAMPLING, name) for name in ignored},  # no effect, or refused
    ).resolve(model)

    if save_dir is not None:
        batch_size = options["batch_size"]  # single images: no class grid to fill
        total = options["n_images"] or batch_size
        os.makedirs(save_dir, exist_ok=True)
        for index, first in enumerate(range(0, total, batch_size)):
            count = min(batch_size, total - first)
            chunk = dataclasses.replace(request, batch_size=count, seed=request.seed + index)
            for offset, image in enumerate(sample_request.run(model, chunk).tiles):
                save_image(image, os.path.join(save_dir, f"{first + offset:06d}.png"))
        click.echo(f"wrote {total} images to {save_dir}")
        return
    images = None
    used = sampling_options.REAL_IMAGE_MODES.get(mode, 0)
    if used:
        indices = (request.image_idx1, request.image_idx2)[:used]
        channels = model.config.unet.image_channels
        images = modes.load_real_images(real_source, indices, size, channels, data_dir=tfds_dir)
    result = sample_request.run(model, request, images=images, fill_mask=fill_mask)
    if mode == "denoising_process":
        save_path = options["save_path"] or preflight.default_save_path(mode)
        save_gif(result.gif_frames(request.padding), save_path, request.frame_ms, request.hold_ms)
        click.echo(
            f"wrote {len(result.frames)} frames of {len(result.tiles)} samples to {save_path}"
        )
        return
    save_path = options["save_path"] or preflight.default_save_path(mode)
    save_image(result.grid(request.padding), save_path)
    click.echo(f"wrote {len(result.tiles)} {mode} tiles to {save_path}")


@cli.command()
@click.option("--preset", type=run_option_type("preset"), default=None, help="A preset name.")
@click.option("--model", "--model_params", "model_path", default=None, help="A .keras file.")
@click.option(
    "--list", "list_presets", is_flag=True, help="List every preset with its description."
)
def info(preset, model_path, list_presets):
    """Print a preset's or a saved model's configuration and parameter count (a model's
    trained_steps too; its train.train_steps is the steps planned), or list the presets."""
    if list_presets and preset is None and model_path is None:
        from keras_ddpm.config import PRESETS  # Keras-free: --list loads no Keras

        width = max(len(name) for name in PRESETS)
        for name, config in PRESETS.items():
            click.echo(f"{name:<{width}}  {config.description}")
        return
    show_info(preset=preset, model_path=model_path, list_presets=list_presets)


@user_errors(check=preflight.check_info)
def show_info(preset, model_path, list_presets):
    """`info --preset` or `info --model` (the error boundary loads Keras)."""
    trained_steps = None
    if model_path:
        model = load_model_file(model_path)
        config, parameters = model.config, model.network.count_params()
        trained_steps = model.trained_steps
    else:
        from keras_ddpm import build_unet
        from keras_ddpm import get_preset

        config = get_preset(preset)
        parameters = build_unet(config.unet).count_params()
    click.echo(json.dumps(config.to_dict(), indent=2))
    click.echo(f"parameters: {parameters}")
    if model_path:
        planned = config.train.train_steps
        steps = trained_steps if trained_steps is not None else "unknown (not recorded)"
        click.echo(f"trained_steps: {steps} (planned: train.train_steps {planned})")
    if config.source:
        click.echo(f"weights: {config.source}")


@cli.command()
@click.argument("source")
@click.argument("output")
@user_errors(check=preflight.check_export)
def export(source, output):
    """Write SOURCE (a .keras model or checkpoint, or a run directory: its model.keras, else its
    newest checkpoint; a damaged file is skipped) to OUTPUT without optimizer state, for sampling
    and shipping."""
    from keras_ddpm.checkpoints import CheckpointManager
    from keras_ddpm.checkpoints import load_first_good
    from keras_ddpm.checkpoints import write_atomically

    if os.path.isdir(source):
        final = os.path.join(source, "model.keras")
        checkpoints = CheckpointManager(os.path.join(source, "checkpoints")).checkpoints()
        newest_first = [path for _, path in reversed(checkpoints)]
        candidates = ([final] if os.path.isfile(final) else []) + newest_first
        if not candidates:
            raise ValueError(f"{source} holds neither model.keras nor a checkpoint.")
        loaded, model, skipped = load_first_good(candidates, load_model_file)
        for path, reason in skipped:
            click.echo(f"skipped {path}: {reason}", err=True)
        if model is None:
            raise ValueError(f"Neither model.keras nor any checkpoint in {source} loads.")
        source = loaded
    else:
        model = load_model_file(source)
    step = model.trained_steps  # the optimizer's, or the count an exported file recorded
    write_atomically(model.for_inference(), output)
    trained = f" (trained {step} steps)" if step is not None else ""
    size = os.path.getsize(output) / 2**20
    click.echo(f"wrote {output}{trained}: {size:.1f} MiB, from {source}")


@cli.command("convert")
@click.argument("source")
@click.argument("output")
@click.option(
    "--weights",
    type=click.Choice(CONVERTED_WEIGHTS),
    default=CONVERTED_WEIGHTS[0],
    show_default=True,
    help="Where the file holds both: sample with the EMA weights or the trained (raw) ones.",
)
@click.option(
    "--image-size",
    type=click.IntRange(1, 1024),
    default=None,
    help="The size the model was trained at, for files that do not record it [default: the "
    "file's; DDIM's and TensorFlow checkpoints: attention at 16x16; seed 000: NxN in its name].",
)
@user_errors(check=preflight.check_convert)
def convert(source, output, weights, image_size):
    """Convert a published checkpoint to a .keras model: a diffusers UNet2DModel folder or Hub id
    (google/ddpm-cifar10-32), DDIM's ckpt.pth or a DDIM-code state dict, the DDPM authors'
    TensorFlow checkpoint (model.ckpt-N), or a seed 000 / pytorch-ddpm checkpoint."""
    from keras_ddpm.checkpoints import write_atomically
    from keras_ddpm.convert import convert as convert_checkpoint

    start = time.perf_counter()
    model = convert_checkpoint(source, weights, image_size)
    write_atomically(model, output)
    seconds = time.perf_counter() - start
    unet, diffusion = model.config.unet, model.config.diffusion
    click.echo(f"wrote {output} in {seconds:.1f} s: {model.config.source}")
    click.echo(
        f"UNet: {unet.image_size}x{unet.image_size}x{unet.image_channels}, {unet.base_channels} "
        f"channels x {unet.channel_multipliers}, {unet.num_res_blocks} blocks a level, attention "
        f"at {unet.attention_resolutions}, {model.network.count_params():,} parameters"
    )
    click.echo(
        f"diffusion: T = {diffusion.timesteps}, {diffusion.schedule} betas {diffusion.beta_start} "
        f"to {diffusion.beta_end}, predicts {diffusion.prediction}, variance {diffusion.variance}, "
        f"clip x0: {diffusion.clip_denoised}"
    )
    click.echo(f"sample with: python cli.py sample --model {output}")


@cli.command("eval")
@click.option(
    "--model", "--model_params", "model_path", default=None, help="A .keras file to sample from."
)
@click.option(
    "--gen-data-dir",
    "--gen_data_dir",
    "gen_data_dir",
    default=None,
    help="Folder of generated images: read when there is no --model, else the samples are saved "
    "there.",
)
@click.option(
    "--dataset",
    default=None,
    help="Real images: mnist_5k[:split], a tfds dataset 'name[:split]' or a folder.",
)
@click.option(
    "--real-data-dir",
    "--real_data_dir",
    "real_data_dir",
    default=None,
    help="Real images: a folder (searched recursively).",
)
@click.option(
    "--data-dir",
    "--data_dir",
    "data_dir",
    default=None,
    help="tfds data directory [default: ~/tensorflow_datasets].",
)
@click.option(
    "--crop",
    type=click.Choice(sampling_options.CROP_CHOICES),
    default=EVAL.crop,
    show_default=True,
    help="Crop of the real images (as in `train`).",
)
@click.option(
    "--n-eval-imgs",
    "--n_eval_imgs",
    "num_images",
    type=click.IntRange(min=2),
    default=EVAL.num_images,
    show_default=True,
    help="Generated images, and real images at most (50,000 is the papers' protocol).",
)
@click.option(
    "--batch-size",
    "--batch_size",
    "batch_size",
    type=click.IntRange(min=1),
    default=EVAL.batch_size,
    show_default=True,
    help="Images per sampling batch and per Inception pass.",
)
@sampling_click_options(
    sampler=f"[default: {sampling_options.default_sampler(SAMPLING.mode)}]",
    guidance="Classifier-free guidance weight w (class-conditional models draw every class in "
    "turn).",
    seed="Seed of the first sampling batch (batch i uses seed + i).",
)
@click.option(
    "--features",
    type=click.Choice(FEATURES),
    default=EVAL.features,
    show_default=True,
    help="inception-2015: the TF Inception graph of published FIDs (pytorch-fid's weights); "
    "keras-imagenet: Keras' ImageNet InceptionV3 (not comparable with papers).",
)
@click.option(
    "--resize",
    type=click.Choice(RESIZES),
    default=EVAL.resize,
    show_default=True,
    help="To 299x299 as clean-fid (PIL bicubic), pytorch-fid (bilinear) or the TF graph (TF1 "
    "bilinear) does it; see docs/evaluation.md for which published numbers each matches.",
)
@click.option(
    "--inception-weights",
    default=EVAL.inception_weights,
    help="A local weights file of the feature network (pytorch-fid's .pth for inception-2015) "
    "[default: its published weights, downloaded once into ~/.keras/models].",
)
@click.option(
    "--real-stats",
    default=None,
    help="Real side: an .npz of precomputed statistics (mu, sigma) from pytorch-fid, clean-fid "
    "or --save-stats, instead of real images.",
)
@click.option(
    "--save-stats",
    default=None,
    help="Write the generated images' statistics to this .npz (mu, sigma: pytorch-fid's format).",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Where reference statistics are cached [default: $KERAS_DDPM_CACHE or "
    "~/.cache/keras_ddpm/fid].",
)
@click.option(
    "--cache/--no-cache",
    "use_cache",
    default=EVAL.use_cache,
    show_default=True,
    help="Cache the real images' statistics.",
)
@click.option(
    "--kid-subsets", type=click.IntRange(min=1), default=EVAL.kid_subsets, show_default=True
)
@click.option(
    "--kid-subset-size",
    type=click.IntRange(min=2),
    default=EVAL.kid_subset_size,
    show_default=True,
)
@click.option("--output", default="eval.json", show_default=True, help="JSON file for the results.")
@user_errors(check=preflight.check_eval)
def evaluate(output, **options):
    """FID and KID of a model's samples (or a folder of images) against real images."""
    from keras_ddpm import evaluation

    config = EvalConfig(**preflight.eval_config_options(options))
    if config.model_path:  # the model's own rows (guidance) once it loads: not checked here
        sampler = config.sampler or sampling_options.default_sampler(SAMPLING.mode)
        warn_ignored({"sampler": sampler}, given_options(sampling_options.CHAIN_OPTIONS))
    record = evaluation.evaluate(config, echo=click.echo)
    generated, real = record["num_generated"], record["num_real"]
    counts = f"{generated} generated vs {'?' if real is None else real} real images"
    settings = f"{record['features']} features, {record['resize']} resize"
    click.echo(f"FID {record['fid']:.3f} ({settings}; {counts})")
    if record["kid"] is None:
        click.echo("KID not measured: the real statistics file holds no feature rows.")
    else:
        subset_size = min(config.kid_subset_size, generated, real)
        click.echo(
            f"KID {record['kid']:.5f} +- {record['kid_std']:.5f} ({counts}, "
            f"{config.kid_subsets} subsets of {subset_size})"
        )
    click.echo(f"note: {record['note']}.")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(record, f, indent=2)
    kept = config.model_path and config.gen_data_dir
    click.echo(f"wrote {output}" + (f"; generated images in {config.gen_data_dir}" if kept else ""))


if __name__ == "__main__":
    main()
