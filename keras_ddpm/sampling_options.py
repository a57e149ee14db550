"""The sampling options in one place: their names, defaults and limits.

`python cli.py sample` and `eval`, the sampling app's form, `SampleRequest` and the samplers read
them from here. The module imports neither Keras nor NumPy, so the CLI's `--help` stays quick.

    sampler   ddim (DDIM eq. 12), ddpm (DDPM Algorithm 2), dpm_solver (DPM-Solver++(2M))
    skip      the timesteps a sampler visits: uniform and quadratic (DDIM's), linspace and
              trailing (diffusers'), logsnr (DPM-Solver's); see `samplers.ddim_timesteps`
    variance  DDPM's sigma_t^2: fixed_small (beta-tilde_t) or fixed_large (beta_t)
    mode      what is drawn (see `sampling_modes`)
"""

import dataclasses

SAMPLERS = ("ddim", "ddpm", "dpm_solver")
SKIPS = ("uniform", "quadratic", "linspace", "trailing", "logsnr")
VARIANCES = ("fixed_small", "fixed_large")
MODE_LABELS = {  # mode -> its name in the app
    "normal": "normal",
    "denoising_process": "denoising process",
    "interpolation": "interpolation",
    "coarse_to_fine": "coarse-to-fine",
    "sequence": "sequence",
    "inpainting": "inpainting",
}
MODES = tuple(MODE_LABELS)
INTERPOLATION_SPACES = ("pixel", "latent")
CROPS = ("center", "celeba", "none")  # how a dataset's images are cropped (`data.transforms`)
CROP_CHOICES = ("auto", *CROPS)  # auto: celeba for celeb_a, center otherwise

STOCHASTIC_MODES = ("coarse_to_fine", "inpainting")  # they draw with ddpm unless told otherwise
REAL_IMAGE_MODES = {"interpolation": 2, "coarse_to_fine": 1, "inpainting": 1}  # real images used
DEFAULT_FRAMES = {"denoising_process": 20, "sequence": 10}  # default GIF frames / sequence columns
DEFAULT_STEPS = {"ddim": 50, "ddpm": 50, "dpm_solver": 20}  # default steps of each sampler
# Default spacings. ddim: DDIM's own "uniform", so DDIM's Table 1 reproduces and the images equal
# diffusers' DDIMScheduler's (its default "leading" is the same sequence). ddpm: a sub-sequence
# evenly spaced from T - 1 ("linspace"), so it starts from the noisiest x_T. dpm_solver: the
# paper's logSNR.
DEFAULT_SKIPS = {"ddim": "uniform", "ddpm": "linspace", "dpm_solver": "logsnr"}

MAX_SEED = 2**31 - 1
MAX_ETA = 1.0  # DDIM's eta above 1 adds more noise than DDPM; the CLI asks for --allow-eta-above-1
MAX_IMAGES = 1024  # images of one request (the CLI's largest --batch-size)
MAX_COARSE_TIMESTEPS = 64  # coarse_to_fine rows (DDPM Figure 9 has 6)
# The network evaluations one request may cost by default (`SampleRequest.resolve`): a guard
# against typos on the user's own machine, about 5 times MAX_IMAGES images through 1,000 steps
# with guidance. The app passes its own, far lower, cap.
MAX_EVALUATIONS = 10_000_000

# The options of `sample` that `eval` takes too: how each image's chain runs.
CHAIN_OPTIONS = ("sampler", "steps", "eta", "skip", "variance", "guidance", "seed", "use_ema")
COMMON_OPTIONS = (
    "mode",
    "sampler",
    "steps",
    "eta",
    "skip",
    "variance",
    "guidance",
    "class_label",
    "seed",
    "batch_size",
    "padding",
)
# The modes whose grid has, for a class-conditional model without a class label, one column per
# class (`class_grid_size`); sequence has a row per image instead.
CLASS_GRID_MODES = ("normal", "denoising_process")

# The options a sampler or model ignores: (option, the setting that decides, the values of that
# setting under which the option has no effect, why: "{value}" is the setting's value).
# `ignored_options` reads it; the CLI warns.
IGNORED_OPTIONS = (
    ("eta", "sampler", ("ddpm", "dpm_solver"), "only the ddim sampler has an eta, not {value}"),
    (
        "variance",
        "sampler",
        ("ddim", "dpm_solver"),
        "only the ddpm sampler draws with a variance, not {value}",
    ),
    ("guidance", "conditional", (False,), "the model is unconditional"),
    ("class_label", "conditional", (False,), "the model is unconditional"),
)

MODE_OPTIONS = {  # the options each mode reads besides the common ones (the CLI's, "_" for "-")
    "normal": (),
    "denoising_process": ("n_frames", "frame_ms", "hold_ms"),
    "sequence": ("n_frames",),
    "interpolation": (
        "dataset",
        "image_idx1",
        "image_idx2",
        "interpolate_at",
        "n_points",
        "interpolation_space",
    ),
    "coarse_to_fine": ("dataset", "image_idx1", "coarse_timesteps"),
    "inpainting": ("dataset", "image_idx1", "mask"),
}


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """The options of one sampling request and their defaults, named as `cli.py sample`'s.

    `None` stands for a default that depends on another option: the sampler on the mode
    (`default_sampler`), steps and skip on the sampler (`default_steps`, `default_skip`), the
    frames on the mode (`DEFAULT_FRAMES`), the interpolation timestep on the model (T/2), the
    coarse rows on the model (`sampling_modes.default_coarse_timesteps`), the mask on the image
    size.
    """

    mode: str = "normal"
    sampler: str = None
    steps: int = None
    eta: float = 0.0  # DDIM eta (0: deterministic)
    skip: str = None
    variance: str = None  # None: the model's (fixed_small, or an imported checkpoint's)
    guidance: float = 0.0  # classifier-free guidance weight w
    clip_denoised: bool = None  # clip x0_hat to [-1, 1]; None: the model's
    use_ema: bool = True  # sample with the EMA weights (False: the trained ones)
    class_label: int = None  # class-conditional models: None draws a column per class
    seed: int = 0
    batch_size: int = 16  # images of the grid, or samples per row (coarse_to_fine, inpainting)
    n_frames: int = None
    padding: int = 2  # pixels between grid tiles
    dataset: str = "mnist_5k"  # real images of interpolation, coarse_to_fine and inpainting
    image_idx1: int = 0
    image_idx2: int = 1
    interpolate_at: int = None
    n_points: int = 10
    interpolation_space: str = "pixel"
    coarse_timesteps: tuple = None
    mask: str = None  # inpainting box "x0,y0,x1,y1" [default: the central half]
    frame_ms: int = 80
    hold_ms: int = 2000

    @classmethod
    def from_options(cls, options, **overrides):
        """The sampling options among `options` (a mapping that may hold others, such as a
        command's), with `overrides` in their place."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**options, **overrides}.items() if k in names})


DEFAULTS = SamplingOptions()


def default_sampler(mode):
    """ddpm for the modes that draw several images from one x_t, ddim otherwise."""
    return "ddpm" if mode in STOCHASTIC_MODES else "ddim"


def default_steps(sampler):
    return DEFAULT_STEPS.get(sampler, DEFAULT_STEPS["ddim"])


def default_skip(sampler):
    """The timestep spacing of `sampler` when none is given."""
    return DEFAULT_SKIPS.get(sampler, DEFAULT_SKIPS["ddim"])


def class_grid_size(batch_size, num_classes):
    """The images a class-conditional grid draws for `batch_size` (modes `CLASS_GRID_MODES`, no
    class label): one column per class and batch_size // num_classes full rows, or, for fewer
    images than classes, one row of the first batch_size classes. No slot of the grid is empty."""
    if not num_classes or batch_size < num_classes:
        return batch_size
    return batch_size - batch_size % num_classes


def ignored_options(settings, given, conditional=None):
    """[(option, why)] for each option in `given` (the names a user set) that has no effect
    under `settings` (a mapping of option names to values: the sampler after its default is
    applied, ...), by `IGNORED_OPTIONS`; `conditional` is whether the model takes class labels
    (None: not known yet, so the model's rows are not checked)."""
    facts = {**settings, "conditional": conditional}
    ignored = {}
    for option, setting, values, why in IGNORED_OPTIONS:
        value = facts.get(setting)
        if option in given and option not in ignored and value is not None and value in values:
            ignored[option] = why.format(value=value)
    return list(ignored.items())


def parse_coarse_timesteps(text):
    """coarse_to_fine's rows from text: "999,500,100" -> (999, 500, 100); blank -> None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ValueError(
            f"Coarse-to-fine timesteps are comma-separated whole numbers. Received: {text!r}"
        ) from None
