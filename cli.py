"""keras_ddpm command line: train, sample and inspect denoising diffusion models.

    python cli.py train --dataset mnist_5k --preset mnist --out runs/mnist
    python cli.py sample --model runs/mnist/model.keras --save-path samples.png
    python cli.py info --preset ddpm_cifar10
"""

import contextlib
import functools
import json
import math
import os
import sys

import click

SAMPLERS = ("ddim", "ddpm", "dpm_solver")  # sample_request.SAMPLERS, not imported: that loads Keras, slow for --help


def user_errors(command):
    """The command's error boundary: an error a user can cause (a bad value, file or folder, a
    full disk: `ValueError`, `OSError`) becomes one `Error:` sentence and exit status 1; any other
    exception one line too, naming `-v`, which shows its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
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
                f"unexpected {type(error).__name__}: {describe_error(error)} (`python cli.py -v ...` shows the traceback)"
            ) from None

    return wrapper


def describe_error(error):
    """An exception as one line: an `OSError` as "No space left on device: PATH", others their first line."""
    if isinstance(error, OSError) and error.strerror:
        paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
        return error.strerror + (f": {' -> '.join(paths)}" if paths else "")
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def folder_option(context, parameter, value):
    """A click callback: the value names a folder or nothing yet, not an existing file."""
    if value is not None and os.path.exists(value) and not os.path.isdir(value):
        raise click.BadParameter(f"{value} is a file; give a folder (it is created if missing).")
    return value


class FiniteFloat(click.FloatRange):
    """`click.FloatRange` that also refuses nan and inf (they compare false with any bound)."""

    name = "float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


def load_model_file(path):
    """`keras_ddpm.load_model`, with the next step named when there is no file."""
    from keras_ddpm import load_model

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No model file at {path}; train one with `python cli.py train --out DIR` and pass DIR/model.keras."
        )
    try:
        return load_model(path)
    except ValueError:  # already one sentence: damaged, truncated, or not a keras_ddpm model
        raise
    except Exception as error:  # anything else Keras or h5py raise for a file they cannot read
        raise ValueError(f"Could not load {path} as a keras_ddpm model ({type(error).__name__}: {describe_error(error)}).") from None


@click.group()
@click.option("-v", "--traceback", "show_traceback", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(show_traceback):
    """Denoising diffusion models (DDPM, DDIM) in Keras 3 on TensorFlow, PyTorch and JAX."""
    from keras_ddpm import backend

    backend.configure_xla_cpu()


@cli.command()
@click.option("--dataset", default="mnist_5k", show_default=True, help="mnist_5k, a tfds image dataset ('celeb_a', 'cifar10:train'...) or a folder of images.")
@click.option("--data-dir", "--data_dir", "data_dir", default=None, help="tfds data directory [default: ~/tensorflow_datasets].")
@click.option("--image-size", "--image_size", "image_size", type=click.IntRange(min=1), default=None, help="Training image size [default: the preset's].")
@click.option("--crop", type=click.Choice(["auto", "center", "celeba", "none"]), default="auto", show_default=True, help="auto: DDIM's CelebA crop for celeb_a, the centred square otherwise.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips [default: the preset's; off for digits].")
@click.option("--cache", default="auto", show_default=True, help="Cache decoded images: auto (in memory up to 2 GiB), memory, none, or a folder for cache files.")
@click.option("--preset", default="mnist", show_default=True, help="Model preset (see `info`).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Total training steps [default: the preset's].")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=None, help="Global batch size, split across devices [default: the preset's].")
@click.option("--optimizer", type=click.Choice(["adam", "adamw"]), default=None, help="[default: adam]")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=None, help="AdamW's decoupled weight decay [default: 0].")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None, help="Peak learning rate [default: the preset's].")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None, help="After warm-up: constant (DDPM) or cosine decay to 0 [default: constant].")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None, help="Linear warm-up steps [default: the preset's].")
@click.option("--grad-clip", type=FiniteFloat(min=0), default=None, help="Clip gradients to this global norm; 0: off [default: the preset's, 1.0].")
@click.option("--ema-decay", type=FiniteFloat(0, 1, max_open=True), default=None, help="[default: the preset's]")
@click.option("--ema-warmup-power", type=FiniteFloat(min=0), default=None, help="EMA warm-up: decay min(ema_decay, 1 - (1 + step)^-p); 2/3 or 3/4 are usual; 0: off [default: 0].")
@click.option("--prediction", type=click.Choice(["epsilon", "x0", "v"]), default=None, help="Network target [default: epsilon].")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default=None, help="Noise schedule [default: linear].")
@click.option("--class-cond/--no-class-cond", default=False, show_default=True, help="Condition on the dataset's labels (with label dropout for classifier-free guidance).")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True, help="bf16 or fp16 compute (fp16 with dynamic loss scaling); weights, loss and schedule stay float32.")
@click.option("--jit-compile/--no-jit-compile", default=None, help="XLA [default: on for JAX and for TensorFlow with a GPU].")
@click.option("--steps-per-execution", type=click.IntRange(min=1), default=1, show_default=True, help="Steps between callbacks (TensorFlow, JAX); TensorFlow compiles them into one call.")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "data_parallel"]), default="none", show_default=True, help="Data parallel on all local devices: mirrored (TensorFlow) or data_parallel (JAX).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", default="runs/default", show_default=True, callback=folder_option, help="Run directory: model.keras, checkpoints/, metrics.csv, logs/, samples/, config.json.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in OUT that loads (options default to OUT/config.json's, which must exist).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1000, show_default=True, help="Steps between checkpoints.")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=3, show_default=True, help="How many of the newest checkpoints to keep.")
@click.option("--log-every", type=click.IntRange(min=1), default=100, show_default=True, help="Steps between rows of OUT/metrics.csv and TensorBoard scalars.")
@click.option("--sample-every", type=click.IntRange(min=0), default=1000, show_default=True, help="Steps between EMA sample grids in OUT/samples (0: never).")
@click.option("--sample-steps", type=click.IntRange(min=1), default=50, show_default=True, help="DDIM steps of the sample grids.")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True, help="0: quiet; 1: a progress bar.")
@click.option("--fid-every", type=click.IntRange(min=0), default=0, show_default=True, help="Measure FID/KID every N steps (0: never); logged to history, OUT/metrics.csv and OUT/logs.")
@click.option("--fid-samples", type=click.IntRange(min=2), default=1000, show_default=True, help="Images generated (and real images used) per FID.")
@click.option("--fid-steps", type=click.IntRange(min=1), default=50, show_default=True, help="DDIM steps of the FID samples.")
@click.option("--inception-weights", default="imagenet", show_default=True, help="InceptionV3 weights for FID: 'imagenet' (downloaded by Keras) or a local file.")
@user_errors
def train(**options):
    """Train a model (checkpointed, resumable) and save it to OUT/model.keras."""
    import keras

    from keras_ddpm import DiffusionModel
    from keras_ddpm import backend
    from keras_ddpm import data
    from keras_ddpm import training
    from keras_ddpm.callbacks import MetricsWriter
    from keras_ddpm.callbacks import NonFiniteLossError
    from keras_ddpm.checkpoints import CheckpointManager
    from keras_ddpm.checkpoints import RunInUseError
    from keras_ddpm.checkpoints import RunLock
    from keras_ddpm.checkpoints import write_atomically

    out_dir = options["out_dir"]
    o = resolve_train_options(options)
    training.set_mixed_precision(o["mixed_precision"])
    config = train_config(o)
    replicas = training.num_replicas(o["distribute"])
    if config.train.batch_size % replicas:
        raise ValueError(f"The batch size {config.train.batch_size} does not split evenly across {replicas} devices.")
    if o["steps_per_execution"] > 1 and not backend.supports_steps_per_execution():
        raise ValueError("--steps-per-execution needs the tensorflow or jax backend; PyTorch runs one step per call.")
    manager = CheckpointManager(os.path.join(out_dir, "checkpoints"), keep=o["keep_checkpoints"])
    with contextlib.ExitStack() as held:
        try:
            run_lock = held.enter_context(RunLock(out_dir))  # until model.keras is written
        except RunInUseError as error:
            raise click.ClickException(str(error)) from None
        if not o["resume"] and manager.checkpoints():
            raise ValueError(f"{out_dir} already holds checkpoints: pass --resume to continue that run, or choose another --out.")
        keras.utils.set_random_seed(o["seed"])
        with training.distribution_scope(o["distribute"]):
            latest, skipped = manager.load_latest(load_model_file) if o["resume"] else (None, [])
            for path, reason in skipped:
                click.echo(f"skipped {path}: {reason}", err=True)
            if skipped and not latest:
                raise ValueError(f"None of the checkpoints in {manager.directory} loads; move them away to train again from step 0.")
            if latest:
                model = latest[2]
                click.echo(f"resuming from {latest[1]} (step {latest[0]})")
            else:
                if o["resume"]:
                    click.echo(f"no checkpoint in {manager.directory}; starting at step 0")
                model = DiffusionModel(config, seed=o["seed"])
            jit = backend.default_jit_compile() if o["jit_compile"] is None else o["jit_compile"]
            model.compile(optimizer=model.optimizer if latest else None, jit_compile=jit, steps_per_execution=o["steps_per_execution"])
            start = int(model.optimizer.iterations)
            unet, train = model.config.unet, model.config.train
            dataset = data.make_dataset(
                o["dataset"], unet.image_size, unet.image_channels, config.train.batch_size, with_labels=bool(unet.num_classes),
                horizontal_flip=o["flip"] if o["flip"] is not None else train.horizontal_flip and data.default_horizontal_flip(o["dataset"]),
                seed=o["seed"] + start,  # a resumed run draws a new data order rather than replaying the first batches
                data_dir=o["data_dir"], crop=o["crop"], cache=None if o["cache"] == "none" else o["cache"],
            )  # fmt: skip
            write_json(os.path.join(out_dir, "config.json"), {
                "dataset": o["dataset"], "seed": o["seed"], "backend": keras.backend.backend(),
                "config": model.config.replace(train_steps=config.train.train_steps).to_dict(),
                "options": {k: v for k, v in o.items() if k != "resume"},
            })  # fmt: skip
            writer = MetricsWriter(os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "logs"), resume_step=start)
            callbacks = []
            if o["fid_every"]:
                callbacks = fid_callbacks(o["dataset"], model, o["fid_every"], o["fid_samples"], o["fid_steps"], o["inception_weights"], out_dir, o["data_dir"], o["crop"], writer)
            total = config.train.train_steps
            click.echo(f"training {model.config.name} ({model.network.count_params():,} parameters) on {o['dataset']} from step {start} to {total}"
                       + (f" on {replicas} devices" if replicas > 1 else ""))  # fmt: skip
            try:
                result = training.fit(
                    model, dataset, total, out_dir, checkpoint_every=o["checkpoint_every"], keep_checkpoints=o["keep_checkpoints"],
                    log_every=o["log_every"], sample_every=o["sample_every"], sample_steps=o["sample_steps"],
                    batch_size=config.train.batch_size, verbose=o["verbose"], callbacks=callbacks, writer=writer, run_lock=run_lock,
                )  # fmt: skip
            except NonFiniteLossError as error:
                raise click.ClickException(f"{error} Lower --lr or check the data, then --resume.") from None
        if result.interrupted:
            click.echo(f"stopped at step {result.step}/{total}; checkpoint {result.checkpoint}. Continue with: python cli.py train --out {out_dir} --resume")
            sys.exit(130)
        path = write_atomically(model, os.path.join(out_dir, "model.keras"))
    losses = result.history.history.get("loss") if result.history else None
    click.echo((f"final loss {losses[-1]:.4f}; " if losses else f"already trained to step {result.step}; ") + f"model saved to {path}")


def resolve_train_options(options):
    """With --resume, options not given on the command line come from OUT/config.json, which must hold them."""
    from click.core import ParameterSource

    options = dict(options)
    if not options["resume"]:
        return options
    path = os.path.join(options["out_dir"], "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--resume needs {path}, which holds the options of the run to continue, and there is none; restore it, or start a new run without --resume.")
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON ({error}), so the run cannot be resumed.") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("options"), dict):
        shape = type(saved.get("options") if isinstance(saved, dict) else saved).__name__
        raise ValueError(f"{path} must be a JSON object whose \"options\" is an object, as `train` writes it. Received: {shape}")
    context = click.get_current_context()
    params = {param.name: param for param in context.command.params}
    for key, value in saved["options"].items():
        if key not in options or key == "resume" or context.get_parameter_source(key) == ParameterSource.COMMANDLINE:
            continue
        param = params[key]
        try:
            if value is None and param.default is not None:
                raise click.BadParameter("null")
            if value is not None and param.type is click.STRING and not isinstance(value, str):
                raise click.BadParameter("not a string")
            options[key] = None if value is None else param.type.convert(value, param, context)
        except click.BadParameter:
            raise ValueError(f"{path} holds an invalid option {key}={value!r}, so the run cannot be resumed; fix or remove it.") from None
    return options


def train_config(o):
    """The preset with the training options applied (`--class-cond` asks the dataset for its classes)."""
    from keras_ddpm import data
    from keras_ddpm import get_preset

    overrides = {
        "batch_size": o["batch_size"], "learning_rate": o["lr"], "warmup_steps": o["warmup_steps"], "ema_decay": o["ema_decay"],
        "prediction": o["prediction"], "schedule": o["schedule"], "train_steps": o["steps"], "image_size": o["image_size"],
        "optimizer": o["optimizer"], "weight_decay": o["weight_decay"], "lr_schedule": o["lr_schedule"],
        "grad_clip": o["grad_clip"], "ema_warmup_power": o["ema_warmup_power"],
    }  # fmt: skip
    if o["class_cond"]:
        classes = data.num_classes(o["dataset"], data_dir=o["data_dir"])
        if not classes:
            raise ValueError(f"Dataset {o['dataset']!r} has no labels, so --class-cond cannot be used.")
        overrides["num_classes"] = classes
    return get_preset(o["preset"]).replace(**{k: v for k, v in overrides.items() if v is not None})


def write_json(path, value):
    """Writes JSON atomically (a temporary file in the same folder, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


SAVED_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_models")


def default_model_path():
    """The model that ships in saved_models/ (mnist.keras, or the only .keras file there)."""
    shipped = sorted(f for f in os.listdir(SAVED_MODELS) if f.endswith(".keras")) if os.path.isdir(SAVED_MODELS) else []
    if "mnist.keras" in shipped:
        return os.path.join(SAVED_MODELS, "mnist.keras")
    if len(shipped) == 1:
        return os.path.join(SAVED_MODELS, shipped[0])
    if not shipped:
        raise ValueError("No model ships in saved_models/ yet; pass --model PATH (a .keras file written by `train`).")
    raise ValueError(f"saved_models/ holds several models ({', '.join(shipped)}); pass --model PATH to choose one.")


@cli.command()
@click.option("--model", "--model_params", "model_path", default=None, help="A .keras file written by `train` [default: the model in saved_models/].")
@click.option("--mode", type=click.Choice(["normal", "denoising_process", "interpolation", "coarse_to_fine", "sequence", "inpainting"]), default="normal", show_default=True)
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="[default: ddpm for coarse_to_fine and inpainting, ddim otherwise]")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Denoising steps [default: 20 for dpm_solver, 50 otherwise].")
@click.option("--eta", type=FiniteFloat(min=0), default=0.0, show_default=True, help="DDIM eta (0: deterministic).")
@click.option("--skip", type=click.Choice(["uniform", "quadratic", "logsnr"]), default=None, help="Timestep spacing [default: uniform for ddim, logsnr for dpm_solver].")
@click.option("--variance", type=click.Choice(["fixed_small", "fixed_large"]), default="fixed_small", show_default=True, help="DDPM variance.")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(1, 1024), default=16, show_default=True, help="Images per grid (normal, denoising_process, sequence) or samples (coarse_to_fine, inpainting).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--class-label", "--class_label", "class_label", type=int, default=None, help="Class to draw (class-conditional models) [default: a column per class].")
@click.option("--guidance", type=FiniteFloat(), default=0.0, show_default=True, help="Classifier-free guidance weight w (0: plain conditional sampling).")
@click.option("--padding", type=click.IntRange(min=0), default=2, show_default=True, help="Pixels between grid tiles.")
@click.option("--img-size", "--img_size", "img_size", type=int, default=None, help="Checked against the model's image size.")
@click.option("--save-path", "--save_path", "save_path", default=None, help="Output image [default: samples.gif for denoising_process, samples.png otherwise].")
@click.option("--save-dir", "--save_dir", "save_dir", default=None, callback=folder_option, help="normal mode: write --n-images single PNGs here instead of a grid (for FID tools).")
@click.option("--n-images", "--n_images", "n_images", type=click.IntRange(min=1), default=None, help="With --save-dir: how many images [default: --batch-size].")
@click.option("--n-frames", "--n_frames", "n_frames", type=click.IntRange(min=2), default=None, help="Frames of denoising_process [20] / columns of sequence [10].")
@click.option("--frame-ms", type=click.IntRange(min=1), default=80, show_default=True, help="GIF frame duration.")
@click.option("--hold-ms", type=click.IntRange(min=1), default=2000, show_default=True, help="How long the GIF holds its last frame.")
@click.option("--dataset", default="mnist_5k", show_default=True, help="Real images for interpolation, coarse_to_fine, inpainting (as in `train`).")
@click.option("--data-dir", "--data_dir", "data_dir", default=None, help="tfds data directory, or a folder of images used as the dataset.")
@click.option("--image-idx1", "--image_idx1", "image_idx1", type=click.IntRange(min=0), default=0, show_default=True, help="Index of the (first) real image.")
@click.option("--image-idx2", "--image_idx2", "image_idx2", type=click.IntRange(min=0), default=1, show_default=True, help="Index of the second real image (interpolation).")
@click.option("--interpolate-at", "--interpolate_at", "interpolate_at", type=click.IntRange(min=0), default=None, help="Timestep t the images are noised to [default: T/2].")
@click.option("--n-points", "--n_points", "n_points", type=click.IntRange(min=2), default=10, show_default=True, help="Interpolation weights, 0 and 1 included.")
@click.option("--interpolation-space", type=click.Choice(["pixel", "latent"]), default="pixel", show_default=True, help="pixel: mix noised images at --interpolate-at; latent: slerp DDIM-inverted x_T.")
@click.option("--coarse-timesteps", default=None, help="coarse_to_fine rows, e.g. '999,750,500,250,100,25' [default: T, 3T/4, T/2, T/4, T/10, T/40].")
@click.option("--mask", default=None, help="inpainting: a box 'x0,y0,x1,y1' in pixels or a mask image (white = fill) [default: the central box of half the image size].")
@user_errors
def sample(model_path, mode, sampler, steps, eta, skip, variance, batch_size, seed, class_label, guidance, padding, img_size, save_path, save_dir, n_images, n_frames, frame_ms, hold_ms, dataset, data_dir, image_idx1, image_idx2, interpolate_at, n_points, interpolation_space, coarse_timesteps, mask):
    """Sample images from a trained model in one of six modes and save them (PNG/JPEG grid or GIF)."""
    import dataclasses

    from keras_ddpm import sample_request
    from keras_ddpm import sampling_modes as modes
    from keras_ddpm.images import load_mask
    from keras_ddpm.images import save_gif
    from keras_ddpm.images import save_image

    model = load_model_file(model_path or default_model_path())
    size = model.config.unet.image_size
    if img_size is not None and img_size != size:
        raise ValueError(f"--img-size {img_size} does not match the model's image size {size}.")
    if save_dir is not None and mode != "normal":
        raise ValueError("--save-dir writes single images of the normal mode only.")
    timesteps = None
    if coarse_timesteps:
        try:
            timesteps = tuple(int(t) for t in coarse_timesteps.split(","))
        except ValueError:
            raise ValueError(f"--coarse-timesteps takes comma-separated integers. Received: {coarse_timesteps!r}") from None
    fill_mask = None  # a mask image; a box stays in the request
    if mode == "inpainting" and mask is not None and (os.path.isfile(mask) or not mask.replace(",", "").replace(" ", "").isdigit()):
        fill_mask = load_mask(mask, size)
    real_source = data_dir if data_dir and os.path.isdir(data_dir) and dataset == "mnist_5k" else dataset
    request = sample_request.SampleRequest(
        mode=mode, sampler=sampler, steps=steps, eta=eta, skip=skip, variance=variance, guidance=guidance,
        class_label=class_label, seed=seed, batch_size=batch_size, n_frames=n_frames, padding=padding,
        dataset=real_source, image_idx1=image_idx1, image_idx2=image_idx2, interpolate_at=interpolate_at,
        n_points=n_points, interpolation_space=interpolation_space, coarse_timesteps=timesteps,
        mask=None if fill_mask is not None else mask, frame_ms=frame_ms, hold_ms=hold_ms,
    ).resolve(model)  # fmt: skip

    if save_dir is not None:
        total = n_images or batch_size
        os.makedirs(save_dir, exist_ok=True)
        for index, first in enumerate(range(0, total, batch_size)):
            chunk = dataclasses.replace(request, batch_size=min(batch_size, total - first), seed=seed + index)
            for offset, image in enumerate(sample_request.run(model, chunk).tiles):
                save_image(image, os.path.join(save_dir, f"{first + offset:06d}.png"))
        click.echo(f"wrote {total} images to {save_dir}")
        return
    images = None
    used = sample_request.REAL_IMAGE_MODES.get(mode, 0)
    if used:
        tfds_dir = None if real_source == data_dir else data_dir
        images = modes.load_real_images(real_source, (image_idx1, image_idx2)[:used], size, model.config.unet.image_channels, data_dir=tfds_dir)
    result = sample_request.run(model, request, images=images, fill_mask=fill_mask)
    if mode == "denoising_process":
        save_path = save_path or "samples.gif"
        save_gif(result.gif_frames(padding), save_path, frame_ms, hold_ms)
        click.echo(f"wrote {len(result.frames)} frames of {len(result.tiles)} samples to {save_path}")
        return
    save_path = save_path or "samples.png"
    save_image(result.grid(padding), save_path)
    click.echo(f"wrote {len(result.tiles)} {mode} tiles to {save_path}")


@cli.command()
@click.option("--preset", default=None, help="A preset name.")
@click.option("--model", "--model_params", "model_path", default=None, help="A .keras file.")
@user_errors
def info(preset, model_path):
    """Print a preset's or a saved model's configuration and parameter count."""
    if (preset is None) == (model_path is None):
        raise ValueError("Pass exactly one of --preset NAME or --model PATH.")
    if model_path:
        model = load_model_file(model_path)
        config, parameters = model.config, model.network.count_params()
    else:
        from keras_ddpm import build_unet
        from keras_ddpm import get_preset

        config = get_preset(preset)
        parameters = build_unet(config.unet).count_params()
    click.echo(json.dumps(config.to_dict(), indent=2))
    click.echo(f"parameters: {parameters}")


@cli.command()
@click.argument("source")
@click.argument("output")
@user_errors
def export(source, output):
    """Write SOURCE (a .keras model or checkpoint, or a run directory: its model.keras, else its
    newest checkpoint; a damaged file is skipped) to OUTPUT without optimizer state, for sampling and shipping."""
    from keras_ddpm.checkpoints import CheckpointManager
    from keras_ddpm.checkpoints import load_first_good
    from keras_ddpm.checkpoints import write_atomically

    if not output.endswith(".keras"):
        raise ValueError(f"The output file must end in .keras. Received: {output}")
    if os.path.isdir(source):
        final = os.path.join(source, "model.keras")
        newest_first = [path for _, path in reversed(CheckpointManager(os.path.join(source, "checkpoints")).checkpoints())]
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
    step = int(model.optimizer.iterations) if getattr(model, "optimizer", None) is not None else None
    write_atomically(model.for_inference(), output)
    trained = f" (trained {step} steps)" if step is not None else ""
    click.echo(f"wrote {output}{trained}: {os.path.getsize(output) / 2**20:.1f} MiB, from {source}")


def fid_callbacks(dataset, model, every, num_samples, steps, inception_weights, out_dir, data_dir=None, crop="auto", writer=None):
    """[FIDCallback] for `train --fid-every`: reference statistics first, so bad weights fail before training."""
    from keras_ddpm import fid
    from keras_ddpm.callbacks import FIDCallback

    if steps > model.schedule.timesteps:
        raise ValueError(f"--fid-steps {steps} exceeds the model's {model.schedule.timesteps} training timesteps.")
    extractor = fid.inception_v3(inception_weights, batch_size=min(50, num_samples))
    size, _, channels = model.image_shape
    click.echo(f"reference statistics of {dataset} ({num_samples} images at most)")
    reference, _ = fid.reference_statistics(
        dataset, size, channels, num_samples, extractor, cache_dir=fid.default_cache_dir(), progress=True, crop=crop, data_dir=data_dir
    )
    callback = FIDCallback(
        reference,
        num_samples,
        every_n_steps=every,
        extractor=extractor,
        steps=steps,
        batch_size=extractor.batch_size,
        csv_path=os.path.join(out_dir, "metrics.csv"),
        log_dir=os.path.join(out_dir, "logs"),
        writer=writer,
    )
    return [callback]


@cli.command("eval")
@click.option("--model", "--model_params", "model_path", default=None, help="A .keras file to sample from.")
@click.option("--gen-data-dir", "--gen_data_dir", "gen_data_dir", default=None, help="Folder of generated images: read when there is no --model, else the samples are saved there.")
@click.option("--dataset", default=None, help="Real images: mnist_5k[:split], a tfds dataset 'name[:split]' or a folder.")
@click.option("--real-data-dir", "--real_data_dir", "real_data_dir", default=None, help="Real images: a folder (searched recursively).")
@click.option("--data-dir", "--data_dir", "data_dir", default=None, help="tfds data directory [default: ~/tensorflow_datasets].")
@click.option("--crop", type=click.Choice(["auto", "center", "celeba", "none"]), default="auto", show_default=True, help="Crop of the real images (as in `train`).")
@click.option("--n-eval-imgs", "--n_eval_imgs", "num_images", type=click.IntRange(min=2), default=10_000, show_default=True, help="Generated images, and real images at most (50,000 is the papers' protocol).")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=50, show_default=True, help="Images per sampling batch and per Inception pass.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="ddim", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Denoising steps.")
@click.option("--eta", type=FiniteFloat(min=0), default=0.0, show_default=True, help="DDIM eta (0: deterministic).")
@click.option("--skip", type=click.Choice(["uniform", "quadratic"]), default="uniform", show_default=True, help="DDIM timestep skip.")
@click.option("--variance", type=click.Choice(["fixed_small", "fixed_large"]), default="fixed_small", show_default=True, help="DDPM variance.")
@click.option("--guidance", type=FiniteFloat(), default=0.0, show_default=True, help="Classifier-free guidance weight w (class-conditional models draw every class in turn).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first sampling batch (batch i uses seed + i).")
@click.option("--inception-weights", default="imagenet", show_default=True, help="'imagenet' (downloaded by Keras) or a local InceptionV3 weights file.")
@click.option("--cache-dir", default=None, help="Where reference statistics are cached [default: $KERAS_DDPM_CACHE or ~/.cache/keras_ddpm/fid].")
@click.option("--cache/--no-cache", "use_cache", default=True, show_default=True, help="Cache the real images' statistics.")
@click.option("--kid-subsets", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=1000, show_default=True)
@click.option("--output", default="eval.json", show_default=True, help="JSON file for the results.")
@user_errors
def evaluate(model_path, gen_data_dir, dataset, real_data_dir, data_dir, crop, num_images, batch_size, sampler, steps, eta, skip, variance, guidance, seed, inception_weights, cache_dir, use_cache, kid_subsets, kid_subset_size, output):
    """FID and KID of a model's samples (or a folder of images) against real images."""
    import keras

    from keras_ddpm import fid

    if (dataset is None) == (real_data_dir is None):
        raise ValueError("Pass exactly one of --dataset NAME or --real-data-dir DIR for the real images.")
    if model_path is None and gen_data_dir is None:
        raise ValueError("Pass --model PATH to sample images, or --gen-data-dir DIR of generated images.")
    if real_data_dir is not None and not os.path.isdir(real_data_dir):
        raise FileNotFoundError(f"No image folder at {real_data_dir}.")
    if model_path is None and not os.path.isdir(gen_data_dir):
        raise FileNotFoundError(f"No image folder at {gen_data_dir}; pass --model PATH to generate images into it.")
    extractor = fid.inception_v3(inception_weights, min(batch_size, num_images))
    if model_path:
        model = load_model_file(model_path)
        if steps > model.schedule.timesteps:
            raise ValueError(f"--steps {steps} exceeds the model's {model.schedule.timesteps} training timesteps.")
        size, _, channels = model.image_shape
        sampling = {"sampler": sampler, "steps": steps, "eta": eta, "skip": skip, "variance": variance, "guidance": guidance}
        generated_batches = fid.model_batches(model, num_images, batch_size, save_dir=gen_data_dir, seed=seed, **sampling)
        generated_source = model_path
    else:
        first = fid.read_image(fid.list_images(gen_data_dir)[0])
        size, channels = first.shape[0], first.shape[-1]
        generated_batches = fid.folder_batches(gen_data_dir, batch_size, size, channels)
        generated_source, sampling = gen_data_dir, None
    real_source = dataset or real_data_dir
    click.echo(f"generated images from {generated_source} ({size}x{size}x{channels})")
    generated = fid.compute_statistics(generated_batches, extractor, num_images, progress=True)
    click.echo(f"real images from {real_source}")
    real, cached = fid.reference_statistics(
        real_source,
        size,
        channels,
        num_images,
        extractor,
        batch_size,
        cache_dir=(cache_dir or fid.default_cache_dir()) if use_cache else None,
        progress=True,
        crop=crop,
        data_dir=data_dir,
    )
    results = fid.compare(generated, real, kid_subsets, kid_subset_size)
    counts = f"{results['num_generated']} generated vs {results['num_real']} real images"
    click.echo(f"FID {results['fid']:.3f} ({counts})")
    click.echo(f"KID {results['kid']:.5f} +- {results['kid_std']:.5f} ({counts}, {kid_subsets} subsets of {min(kid_subset_size, results['num_generated'], results['num_real'])})")
    click.echo(f"note: {fid.NOTE}.")
    record = {
        **results,
        "generated": generated_source,
        "real": real_source,
        "sampling": sampling,
        "seed": seed,
        "image_shape": [size, size, channels],
        "inception_weights": extractor.name or "random",
        "reference_cache": cached,
        "backend": keras.backend.backend(),
        "note": fid.NOTE,
    }
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    with open(output, "w") as f:
        json.dump(record, f, indent=2)
    click.echo(f"wrote {output}" + (f"; generated images in {gen_data_dir}" if model_path and gen_data_dir else ""))


if __name__ == "__main__":
    sys.exit(cli())
