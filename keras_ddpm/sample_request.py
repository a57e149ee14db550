"""One sampling request: the options of `python cli.py sample` (`sampling_options`) checked
against a model, run through `sampling_modes`, and written back as the equivalent command line.

Shared by the CLI's `sample` and `eval` and the sampling app (apps/sample_app.py), so they draw
the same images for the same options and seed:

    request = SampleRequest(mode="normal", steps=20, seed=3).resolve(model)
    result = run(model, request)
    save_image(result.grid(), "samples.png")
    print(request.command("saved_models/mnist.keras", "samples.png"))
"""

import dataclasses
import math
import os
import shlex

import numpy as np

from keras_ddpm import samplers
from keras_ddpm import sampling_modes as modes
from keras_ddpm.data.image_files import MAX_PIXELS
from keras_ddpm.images import make_grid
from keras_ddpm.images import parse_box
from keras_ddpm.sampling_options import CLASS_GRID_MODES
from keras_ddpm.sampling_options import COMMON_OPTIONS
from keras_ddpm.sampling_options import DEFAULT_FRAMES
from keras_ddpm.sampling_options import INTERPOLATION_SPACES
from keras_ddpm.sampling_options import MAX_COARSE_TIMESTEPS
from keras_ddpm.sampling_options import MAX_EVALUATIONS
from keras_ddpm.sampling_options import MAX_IMAGES
from keras_ddpm.sampling_options import MAX_SEED
from keras_ddpm.sampling_options import MODE_OPTIONS
from keras_ddpm.sampling_options import MODES
from keras_ddpm.sampling_options import REAL_IMAGE_MODES
from keras_ddpm.sampling_options import SAMPLERS
from keras_ddpm.sampling_options import VARIANCES
from keras_ddpm.sampling_options import SamplingOptions
from keras_ddpm.sampling_options import class_grid_size
from keras_ddpm.sampling_options import default_sampler
from keras_ddpm.sampling_options import default_skip
from keras_ddpm.sampling_options import default_steps


@dataclasses.dataclass(frozen=True)
class SampleRequest(SamplingOptions):
    """`cli.py sample`'s options (`SamplingOptions`, same names). `None` means the mode's or the
    sampler's default; `resolve(model)` fills those in and checks every value against the model.

    `variance` and `clip_denoised` default to the model's (`DiffusionConfig`): fixed-small and
    clipping for models trained here, their authors' settings for imported checkpoints. A
    class-conditional grid without a class label draws whole rows, a column per class
    (`sampling_options.class_grid_size`: 16 images of 10 classes become 10).
    """

    def resolve(self, model, max_images=MAX_IMAGES, max_evaluations=MAX_EVALUATIONS):
        """A copy with the defaults filled in; raises ValueError (one sentence) for a bad value,
        or for a request that would cost more than `max_evaluations` (see `network_evaluations`)."""
        timesteps = model.schedule.timesteps
        if self.mode not in MODES:
            raise ValueError(
                f"mode must be one of {', '.join(MODES)}. Received: mode={self.mode!r}"
            )
        sampler = self.sampler or default_sampler(self.mode)
        if sampler not in SAMPLERS:
            raise ValueError(
                f"sampler must be one of {', '.join(SAMPLERS)}. Received: sampler={sampler!r}"
            )
        steps = default_steps(sampler) if self.steps is None else self.steps
        _check_int("steps", steps, 1, timesteps, f" (the model's {timesteps} training timesteps)")
        _check_int("the number of images", self.batch_size, 1, max_images)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("padding", self.padding, 0, 64)
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be a number >= 0. Received: eta={self.eta!r}")
        if not (isinstance(self.guidance, (int, float)) and math.isfinite(self.guidance)):
            raise ValueError(
                f"guidance must be a finite number. Received: guidance={self.guidance!r}"
            )
        if self.class_label is not None:
            if not model.num_classes:
                raise ValueError("This model is unconditional; it takes no class label.")
            _check_int("class label", self.class_label, 0, model.num_classes - 1)
        n_frames = None  # only these two modes have frames
        if self.mode in DEFAULT_FRAMES:
            n_frames = self.n_frames or DEFAULT_FRAMES[self.mode]
            _check_int("the number of frames", n_frames, 2, 200)
        if self.mode == "interpolation":
            _check_int("the number of interpolation points", self.n_points, 2, 64)
            if self.interpolate_at is not None:
                _check_int("the interpolation timestep", self.interpolate_at, 0, timesteps - 1)
            if self.interpolation_space not in INTERPOLATION_SPACES:
                raise ValueError(
                    f"The interpolation space must be {' or '.join(INTERPOLATION_SPACES)}. "
                    f"Received: {self.interpolation_space!r}"
                )
        coarse = None if self.coarse_timesteps is None else tuple(self.coarse_timesteps)
        if coarse is not None:
            _check_int(
                "the number of coarse-to-fine timesteps", len(coarse), 1, MAX_COARSE_TIMESTEPS
            )
            if min(coarse) < 0 or max(coarse) >= timesteps:
                raise ValueError(
                    f"Coarse-to-fine timesteps must lie in [0, {timesteps - 1}]. "
                    f"Received: {list(coarse)}"
                )
        for name in ("image_idx1", "image_idx2"):
            _check_int(f"the image index ({name})", getattr(self, name), 0, 10**9)
        if self.mode == "inpainting":
            self.fill_mask(model.config.unet.image_size)  # raises for a bad box
        variance = self.variance or model.config.diffusion.variance
        if variance not in VARIANCES:
            raise ValueError(
                f"variance must be one of {', '.join(VARIANCES)}. Received: variance={variance!r}"
            )
        batch_size = self.batch_size
        if self.mode in CLASS_GRID_MODES and self.class_label is None:
            batch_size = class_grid_size(batch_size, model.num_classes)
        clip = (
            model.config.diffusion.clip_denoised
            if self.clip_denoised is None
            else self.clip_denoised
        )
        resolved = dataclasses.replace(
            self,
            sampler=sampler,
            steps=steps,
            batch_size=batch_size,
            n_frames=n_frames,
            coarse_timesteps=coarse,
            variance=variance,
            clip_denoised=bool(clip),
        )
        evaluations = resolved.network_evaluations(model)
        if evaluations > max_evaluations:
            raise ValueError(
                f"One request may cost at most {max_evaluations:,} network evaluations (images x "
                "steps x rows, twice that with guidance); draw fewer images, steps or rows. "
                f"Received: {evaluations:,} evaluations"
            )
        return resolved

    def network_evaluations(self, model):
        """What a resolved request costs: the images the network denoises, summed over every step of
        every chain (images x steps x rows), twice that with classifier-free guidance (the network
        runs on [x; x]). The one count that `resolve`'s `max_evaluations` caps, for every mode."""
        schedule = model.schedule
        guided = 2 if model.num_classes and self.guidance != 0 else 1

        def chain(start=None):  # the steps of one chain: `DiffusionModel.generate`'s plan
            return len(samplers.SamplerSettings.pick(self.generate_options()).plan(schedule, start))

        if (
            self.mode == "interpolation" and self.interpolation_space == "latent"
        ):  # DDIM inversion of both, then DDIM
            skip = self.skip or default_skip("ddim")
            inversion = len(samplers.ddim_inversion_plan(schedule, self.steps, skip))
            return 2 * inversion + guided * self.n_points * len(
                samplers.ddim_plan(schedule, self.steps, 0.0, skip)
            )
        if self.mode == "interpolation":
            start = schedule.timesteps // 2 if self.interpolate_at is None else self.interpolate_at
            return guided * self.n_points * chain(start)
        if self.mode == "coarse_to_fine":
            rows = self.coarse_timesteps or modes.default_coarse_timesteps(schedule.timesteps)
            return guided * self.batch_size * sum(chain(t) for t in rows)
        return guided * self.batch_size * chain()

    def generate_options(self):
        """The keyword arguments of `DiffusionModel.generate` (and of the `sampling_modes`
        functions); a variance or clipping left to the model (None) is left out."""
        options = dict(
            sampler=self.sampler,
            steps=self.steps,
            eta=self.eta,
            skip=self.skip,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
            use_ema=self.use_ema,
            guidance=self.guidance,
            class_labels=self.class_label,
        )
        return {
            key: value
            for key, value in options.items()
            if value is not None or key not in ("variance", "clip_denoised")
        }

    def fill_mask(self, image_size):
        """inpainting: (H, W, 1), 1 inside the box the model fills (default: the central half)."""
        quarter = image_size // 4
        return parse_box(
            self.mask or f"{quarter},{quarter},{image_size - quarter},{image_size - quarter}",
            image_size,
        )

    def settings(self):
        """The options that matter to this mode (None left out), by name."""
        names = COMMON_OPTIONS + MODE_OPTIONS[self.mode]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def command(self, model_path, save_path=None, dataset=None):
        """The `python cli.py sample ...` line that draws the same images (options at their
        defaults are left out). `dataset` overrides the request's (e.g. a folder of uploads)."""
        defaults = SamplingOptions()
        settings = {
            **self.settings(),
            **({"dataset": dataset} if dataset and self.mode in REAL_IMAGE_MODES else {}),
        }
        args = ["python", "cli.py", "sample", "--model", model_path]
        for name, value in settings.items():
            if value != getattr(defaults, name) or name in (
                "mode",
                "sampler",
                "steps",
                "seed",
                "batch_size",
            ):
                args += [
                    "--" + name.replace("_", "-"),
                    ",".join(map(str, value)) if isinstance(value, tuple) else str(value),
                ]
        if not self.use_ema:
            args.append("--no-ema")
        if save_path:
            args += ["--save-path", save_path]
        return shlex.join(args)


def _check_int(name, value, low, high, why=""):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise ValueError(
            f"{name[0].upper()}{name[1:]} must be a whole number from {low} to {high}{why}. "
            f"Received: {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """tiles: uint8 (N, H, W, C) laid out `ncols` wide; frames: uint8 (F, N, H, W, C) of a
    denoising process (its last frame is `tiles`), else None."""

    tiles: np.ndarray
    ncols: int = None
    frames: np.ndarray = None

    def grid(self, padding=2):
        return make_grid(self.tiles, ncols=self.ncols, padding=padding)

    def gif_frames(self, padding=2):
        return np.stack(
            [make_grid(frame, ncols=self.ncols, padding=padding) for frame in self.frames]
        )


def real_images(model, request, given=()):
    """The real images a mode uses, float32 [-1, 1] (H, W, C) each: `given[i]` where it is not
    None (e.g. an uploaded image), else image `image_idx{i + 1}` of `request.dataset`."""
    count = REAL_IMAGE_MODES.get(request.mode, 0)
    given = list(given) + [None] * (count - len(given))
    indices = (request.image_idx1, request.image_idx2)
    size, channels = model.config.unet.image_size, model.config.unet.image_channels
    missing = [indices[i] for i in range(count) if given[i] is None]
    loaded = iter(
        modes.load_real_images(request.dataset, missing, size, channels) if missing else []
    )
    return [image if image is not None else next(loaded) for image in given[:count]]


def load_image_file(path, image_size, image_channels, crop="center", max_pixels=MAX_PIXELS):
    """An image file of any size or mode as the data pipeline converts a folder's images (decoded
    to RGB, cropped, resized with antialiasing or 28 -> 32 padded, channels converted): float32
    [-1, 1] (H, W, C). Only Pillow reads the file; an unreadable one, or one of more than
    `max_pixels` pixels, raises a ValueError that names the file without its folder."""
    from keras_ddpm import data
    from keras_ddpm.data import transforms

    rgb = data.read_image(path, channels=3, max_pixels=max_pixels, name=os.path.basename(path))
    tf = data.import_tensorflow()
    image = transforms.crop_image(tf.constant(rgb), crop)
    image = transforms.convert_channels(transforms.resize_image(image, image_size), image_channels)
    return np.asarray(transforms.to_model_range(image))


def run(model, request, images=None, fill_mask=None):
    """Draws `request` (resolved) from `model`: `sampling_modes` does the work.

    `images`: the mode's real images (see `real_images`; loaded from the dataset when None).
    `fill_mask`: inpainting's (H, W, 1) mask (default: `request.fill_mask`).
    """
    options = request.generate_options()
    mode, count, seed = request.mode, request.batch_size, request.seed
    if mode in REAL_IMAGE_MODES and images is None:
        images = real_images(model, request)
    if mode not in REAL_IMAGE_MODES:  # drawn from noise alone: a column per class
        labels, ncols = modes.class_grid_labels(model, count, request.class_label)
        options["class_labels"] = labels
    if mode == "normal":
        return SampleResult(modes.normal(model, count, seed=seed, **options), ncols)
    if mode == "denoising_process":
        frames = modes.denoising_process(model, count, request.n_frames, seed=seed, **options)
        return SampleResult(frames[-1], ncols, frames)
    if mode == "sequence":
        rows = modes.sequence(model, count, request.n_frames, seed=seed, **options)
        return SampleResult(rows.reshape(-1, *rows.shape[2:]), rows.shape[1])
    if mode == "interpolation":
        tiles = modes.interpolation(
            model,
            images[0],
            images[1],
            request.interpolate_at,
            request.n_points,
            request.interpolation_space,
            seed=seed,
            **options,
        )
        return SampleResult(tiles, len(tiles))
    if mode == "coarse_to_fine":
        rows = modes.coarse_to_fine(
            model, images[0], request.coarse_timesteps, count, seed=seed, **options
        )
        return SampleResult(rows.reshape(-1, *rows.shape[2:]), rows.shape[1])
    mask = request.fill_mask(model.config.unet.image_size) if fill_mask is None else fill_mask
    tiles = modes.inpainting(model, images[0], mask, count, seed=seed, **options)
    return SampleResult(tiles, len(tiles))


class StepReporter:
    """A model whose every `generate` chain reports each step: `report(done, total, chain)`.

    Wraps a `DiffusionModel` for `run` (attributes pass through); callbacks that the sampling
    modes give still run at their own steps. Inpainting chains report their start and end only:
    stopping after every step would draw the known region's noise in another order than one
    call does, and the images would then differ from the CLI's for the same seed.
    """

    def __init__(self, model, report):
        self._model = model
        self._report = report
        self.chains = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, num_images=None, noise=None, callback=None, callback_steps=None, **kwargs):
        settings = samplers.SamplerSettings.pick(kwargs)
        total = len(settings.plan(self._model.schedule, kwargs.get("start_timestep")))
        wanted = None if callback_steps is None else set(callback_steps)
        self.chains += 1
        chain = self.chains
        self._report(0, total, chain)
        if kwargs.get("known") is not None:
            images = self._model.generate(
                num_images, noise, callback=callback, callback_steps=callback_steps, **kwargs
            )
            self._report(total, total, chain)
            return images

        def each_step(step, t, x, x0):
            if callback is not None and (wanted is None or step in wanted):
                callback(step, t, x, x0)
            self._report(step + 1, total, chain)

        return self._model.generate(
            num_images, noise, callback=each_step, callback_steps=None, **kwargs
        )
