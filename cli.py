"""keras_ddpm command line: train, sample and inspect denoising diffusion models.

    python cli.py train --dataset mnist_5k --preset mnist --out runs/mnist
    python cli.py sample --model runs/mnist/model.keras --save-path samples.png
    python cli.py info --preset ddpm_cifar10
"""

import functools
import json
import os
import sys

import click

SAMPLERS = ("ddim", "ddpm")


def user_errors(command):
    """Turns the errors a user can cause into one sentence and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise click.ClickException(message) from None

    return wrapper


def load_model_file(path):
    from keras_ddpm import load_model

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No model file at {path}; train one with `python cli.py train --out DIR` and pass DIR/model.keras."
        )
    try:
        return load_model(path)
    except Exception as error:  # a corrupt or foreign file: Keras raises many kinds
        raise ValueError(f"Could not load {path} as a keras_ddpm model ({type(error).__name__}: {error}).") from None


@click.group()
def cli():
    """Denoising diffusion models (DDPM, DDIM) in Keras 3 on TensorFlow, PyTorch and JAX."""


@cli.command()
@click.option("--dataset", default="mnist_5k", show_default=True, help="mnist_5k, a tfds image dataset ('celeb_a', 'cifar10:train'...) or a folder of images.")
@click.option("--data-dir", "--data_dir", "data_dir", default=None, help="tfds data directory [default: ~/tensorflow_datasets].")
@click.option("--image-size", "--image_size", "image_size", type=click.IntRange(min=1), default=None, help="Training image size [default: the preset's].")
@click.option("--crop", type=click.Choice(["auto", "center", "celeba", "none"]), default="auto", show_default=True, help="auto: DDIM's CelebA crop for celeb_a, the centred square otherwise.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips [default: the preset's; off for digits].")
@click.option("--cache", default="auto", show_default=True, help="Cache decoded images: auto (in memory up to 2 GiB), memory, none, or a folder for cache files.")
@click.option("--preset", default="mnist", show_default=True, help="Model preset (see `info`).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps [default: the preset's].")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=None, help="[default: the preset's]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate [default: the preset's].")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None, help="Linear warm-up steps [default: the preset's].")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=None, help="[default: the preset's]")
@click.option("--prediction", type=click.Choice(["epsilon", "x0", "v"]), default=None, help="Network target [default: epsilon].")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default=None, help="Noise schedule [default: linear].")
@click.option("--class-cond/--no-class-cond", default=False, show_default=True, help="Condition on the dataset's labels (with label dropout for classifier-free guidance).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", default="runs/default", show_default=True, help="Run directory; the model is written to OUT/model.keras.")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True, help="Keras progress output.")
@click.option("--fid-every", type=click.IntRange(min=0), default=0, show_default=True, help="Measure FID/KID every N steps (0: never); logged to history, OUT/metrics.csv and OUT/logs.")
@click.option("--fid-samples", type=click.IntRange(min=2), default=1000, show_default=True, help="Images generated (and real images used) per FID.")
@click.option("--fid-steps", type=click.IntRange(min=1), default=50, show_default=True, help="DDIM steps of the FID samples.")
@click.option("--inception-weights", default="imagenet", show_default=True, help="InceptionV3 weights for FID: 'imagenet' (downloaded by Keras) or a local file.")
@user_errors
def train(dataset, data_dir, image_size, crop, flip, cache, preset, steps, batch_size, lr, warmup_steps, ema_decay, prediction, schedule, class_cond, seed, out_dir, verbose, fid_every, fid_samples, fid_steps, inception_weights):
    """Train a model with `model.fit` and save it to OUT/model.keras."""
    import keras

    from keras_ddpm import DiffusionModel
    from keras_ddpm import data
    from keras_ddpm import get_preset

    overrides = {
        "batch_size": batch_size,
        "learning_rate": lr,
        "warmup_steps": warmup_steps,
        "ema_decay": ema_decay,
        "prediction": prediction,
        "schedule": schedule,
        "train_steps": steps,
        "image_size": image_size,
    }
    if class_cond:
        classes = data.num_classes(dataset, data_dir=data_dir)
        if not classes:
            raise ValueError(f"Dataset {dataset!r} has no labels, so --class-cond cannot be used.")
        overrides["num_classes"] = classes
    config = get_preset(preset).replace(**{k: v for k, v in overrides.items() if v is not None})
    keras.utils.set_random_seed(seed)
    unet, train_config = config.unet, config.train
    dataset_batches = data.make_dataset(
        dataset,
        unet.image_size,
        unet.image_channels,
        train_config.batch_size,
        with_labels=class_cond,
        horizontal_flip=flip if flip is not None else train_config.horizontal_flip and data.default_horizontal_flip(dataset),
        seed=seed,
        data_dir=data_dir,
        crop=crop,
        cache=None if cache == "none" else cache,
    )
    model = DiffusionModel(config, seed=seed)
    model.compile()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"dataset": dataset, "seed": seed, "backend": keras.backend.backend(), "config": config.to_dict()}, f, indent=2)
    click.echo(f"training {config.name} ({model.network.count_params():,} parameters) on {dataset} for {train_config.train_steps} steps")
    callbacks = fid_callbacks(dataset, model, fid_every, fid_samples, fid_steps, inception_weights, out_dir, data_dir=data_dir, crop=crop) if fid_every else []
    history = model.fit(dataset_batches, epochs=1, steps_per_epoch=train_config.train_steps, shuffle=False, verbose=verbose, callbacks=callbacks)
    path = os.path.join(out_dir, "model.keras")
    model.save(path)
    click.echo(f"final loss {history.history['loss'][-1]:.4f}; model saved to {path}")


@cli.command()
@click.option("--model", "--model_params", "model_path", required=True, help="A .keras file written by `train`.")
@click.option("--mode", type=click.Choice(["normal"]), default="normal", show_default=True)
@click.option("--sampler", type=click.Choice(SAMPLERS), default="ddim", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Denoising steps.")
@click.option("--eta", type=click.FloatRange(min=0), default=0.0, show_default=True, help="DDIM eta (0: deterministic).")
@click.option("--skip", type=click.Choice(["uniform", "quadratic"]), default="uniform", show_default=True, help="DDIM timestep skip.")
@click.option("--variance", type=click.Choice(["fixed_small", "fixed_large"]), default="fixed_small", show_default=True, help="DDPM variance.")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(1, 1024), default=16, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--class-label", "--class_label", "class_label", type=int, default=None, help="Digit/class to draw (class-conditional models).")
@click.option("--guidance", type=float, default=0.0, show_default=True, help="Classifier-free guidance weight w.")
@click.option("--padding", type=click.IntRange(min=0), default=2, show_default=True, help="Pixels between grid tiles.")
@click.option("--img-size", "--img_size", "img_size", type=int, default=None, help="Checked against the model's image size.")
@click.option("--save-path", "--save_path", "save_path", default="samples.png", show_default=True)
@user_errors
def sample(model_path, mode, sampler, steps, eta, skip, variance, batch_size, seed, class_label, guidance, padding, img_size, save_path):
    """Sample images from a trained model and save them as a grid."""
    from keras_ddpm.images import make_grid
    from keras_ddpm.images import save_image

    model = load_model_file(model_path)
    if img_size is not None and img_size != model.config.unet.image_size:
        raise ValueError(f"--img-size {img_size} does not match the model's image size {model.config.unet.image_size}.")
    if steps > model.schedule.timesteps:
        raise ValueError(f"--steps {steps} exceeds the model's {model.schedule.timesteps} training timesteps.")
    images = model.generate(
        batch_size,
        sampler=sampler,
        steps=steps,
        eta=eta,
        seed=seed,
        class_labels=class_label,
        guidance=guidance,
        skip=skip,
        variance=variance,
    )
    save_image(make_grid(images, padding=padding), save_path)
    click.echo(f"wrote {len(images)} samples to {save_path}")


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


def fid_callbacks(dataset, model, every, num_samples, steps, inception_weights, out_dir, data_dir=None, crop="auto"):
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
@click.option("--eta", type=click.FloatRange(min=0), default=0.0, show_default=True, help="DDIM eta (0: deterministic).")
@click.option("--skip", type=click.Choice(["uniform", "quadratic"]), default="uniform", show_default=True, help="DDIM timestep skip.")
@click.option("--variance", type=click.Choice(["fixed_small", "fixed_large"]), default="fixed_small", show_default=True, help="DDPM variance.")
@click.option("--guidance", type=float, default=0.0, show_default=True, help="Classifier-free guidance weight w (class-conditional models draw every class in turn).")
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
