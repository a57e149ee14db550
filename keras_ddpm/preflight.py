"""The CLI's arguments checked before Keras, TensorFlow or a model loads, and before any sampling.

Each `check_<command>(options)` takes a command's options (click's keyword arguments, by the
CLI's names) and raises `ValueError` or `OSError` with one sentence: paths that must exist (a
model file, a dataset folder, a mask image), outputs that cannot be written (a folder that is a
file, an image extension Pillow does not write), values out of range (`--eta` above 1) and
dataset names that are typos ("celeba": did you mean celeb_a?). The CLI's error boundary
(`cli.user_errors`) runs it first, so a mistaken command answers in well under two seconds
instead of after TensorFlow's start-up (about 8 s) or a sampling run. What depends on the model
(the image size of a mask box, class labels) is checked by `SampleRequest.resolve` right after
the model loads, still before sampling.

Imports neither Keras nor TensorFlow (NumPy and Pillow only inside the checks that need them).
"""

import os

from keras_ddpm import sampling_options
from keras_ddpm.saving import check_model_path
from keras_ddpm.saving import default_model_path

SAMPLES_DIR = "samples"  # where `sample` writes when no --save-path is given


def default_save_path(mode):
    """`sample`'s output when no --save-path is given: samples/samples.gif or .png."""
    name = "samples.gif" if mode == "denoising_process" else "samples.png"
    return os.path.join(SAMPLES_DIR, name)


def image_extensions(animated=False):
    """The extensions keras_ddpm reads (`data.IMAGE_EXTENSIONS`) that Pillow also writes: every
    one for a still image; for an animation (`save_all`), those whose format holds frames."""
    from PIL import Image

    from keras_ddpm.data.image_files import IMAGE_EXTENSIONS

    Image.init()
    formats = Image.SAVE_ALL if animated else Image.SAVE
    registered = Image.registered_extensions()
    return tuple(e for e in IMAGE_EXTENSIONS if registered.get(e) in formats)


def writable_folder(path, option):
    """Raises unless files can be written into the folder `path` (created later if missing): the
    nearest part of it that exists must be a folder this process may write into."""
    existing = os.path.abspath(os.path.expanduser(path or "."))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path} cannot be written: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path} cannot be written: {existing} is not writable.")


def writable_file(path, option):
    """Raises unless a file can be written at `path`."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name.")
    writable_folder(os.path.dirname(path) or ".", option)


def image_file(path, option, animated=False):
    """Raises unless `path` ends in an extension of `image_extensions(animated)` and can be
    written."""
    extensions = image_extensions(animated)
    if os.path.splitext(path)[1].lower() not in extensions:
        kind = "animated images" if animated else "images"
        raise ValueError(
            f"{option} {path} must end in {', '.join(extensions)} (the {kind} Pillow writes "
            "that keras_ddpm reads)."
        )
    writable_file(path, option)


def eta(options):
    limit = sampling_options.MAX_ETA
    if options["eta"] > limit and not options.get("allow_eta_above_1"):
        raise ValueError(
            f"--eta {options['eta']:g} is above {limit:g} (eta 1 already draws with DDPM's "
            "noise); pass --allow-eta-above-1 to sample with it anyway."
        )


def mask(text):
    """inpainting's --mask: a box 'x0,y0,x1,y1' (its place in the image is checked once the model
    is loaded) or an existing mask image."""
    if text is None:
        return
    if not text.replace(",", "").replace(" ", "").isdigit():  # a mask image
        if not os.path.isfile(text):
            raise FileNotFoundError(f"No mask image at {text}.")
        return
    box = [int(v) for v in text.split(",") if v.strip()]
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(
            f"A mask box is 'x0,y0,x1,y1' in pixels with x0 < x1 and y0 < y1. Received: {text!r}"
        )


def real_image_source(options):
    """(the dataset `sample` reads real images from, a tfds data dir or None): --data-dir is the
    dataset when it names a folder and --dataset is left at its default."""
    dataset, data_dir = options["dataset"], options["data_dir"]
    if data_dir and os.path.isdir(data_dir) and dataset == sampling_options.DEFAULTS.dataset:
        return data_dir, None
    return dataset, data_dir


def check_sample(options):
    from keras_ddpm.data import check_dataset_name

    check_model_path(options["model_path"] or default_model_path())
    mode = options["mode"]
    if options["save_dir"] is not None:
        if mode != "normal":
            raise ValueError("--save-dir writes single images of the normal mode only.")
        writable_folder(options["save_dir"], "--save-dir")
    else:
        save_path = options["save_path"] or default_save_path(mode)
        image_file(save_path, "--save-path", animated=mode == "denoising_process")
    eta(options)
    sampling_options.parse_coarse_timesteps(options["coarse_timesteps"])  # raises for bad text
    if mode == "inpainting":
        mask(options["mask"])
    if mode in sampling_options.REAL_IMAGE_MODES:
        check_dataset_name(real_image_source(options)[0])


def inception_weights(weights):
    """--inception-weights: "imagenet" (Keras' download) or a file that exists."""
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"No Inception weights file at {weights}; pass the path of the network's weights "
            "file with --inception-weights (docs/evaluation.md names the files)."
        )


def check_train(options):
    from keras_ddpm.data import check_dataset_name

    writable_folder(options["out_dir"], "--out")
    if not options["resume"]:  # with --resume the dataset may come from OUT/config.json
        check_dataset_name(options["dataset"], class_cond=options["class_cond"])
    inception_weights(options["inception_weights"])


def check_eval(options):
    from keras_ddpm.data import check_dataset_name
    from keras_ddpm.evaluation import EvalConfig

    EvalConfig(**eval_config_options(options)).check_sources()
    if options["model_path"] is not None:
        check_model_path(options["model_path"])
        eta(options)
        if options["gen_data_dir"] is not None:
            writable_folder(options["gen_data_dir"], "--gen-data-dir")
    if options["dataset"] is not None:
        check_dataset_name(options["dataset"])
    inception_weights(options["inception_weights"])
    writable_file(options["output"], "--output")
    if options["save_stats"] is not None:
        writable_file(options["save_stats"], "--save-stats")


def eval_config_options(options):
    """`eval`'s options that are `EvalConfig`'s (all but --output and --allow-eta-above-1)."""
    return {k: v for k, v in options.items() if k not in ("output", "allow_eta_above_1")}


def keras_output(output):
    """export's and convert's OUTPUT: a .keras file that can be written."""
    if not output.endswith(".keras"):
        raise ValueError(f"The output file must end in .keras. Received: {output}")
    writable_file(output, "OUTPUT")


def check_export(options):
    source = options["source"]
    if not os.path.exists(source):
        raise FileNotFoundError(f"No model file or run directory at {source}.")
    keras_output(options["output"])


def check_convert(options):
    keras_output(options["output"])


def check_info(options):
    if options["list_presets"]:
        if options["preset"] is not None or options["model_path"] is not None:
            raise ValueError("Pass --list alone, or one of --preset NAME or --model PATH.")
        return
    if (options["preset"] is None) == (options["model_path"] is None):
        raise ValueError("Pass exactly one of --preset NAME or --model PATH (or --list).")
    if options["model_path"] is not None:
        check_model_path(options["model_path"])
