"""FID and KID of a model's samples, or of a folder of images, against real images
(`python cli.py eval`).

    record = evaluate(EvalConfig(model_path="runs/mnist/model.keras", dataset="mnist_5k:test"))
    print(record["fid"], record["kid"])

A model samples through the same `SampleRequest` as `python cli.py sample` (the normal mode),
so the sampler options, their defaults and their checks are the same. The numbers come from
`keras_ddpm.fid`. This module loads Keras only when `evaluate` runs.
"""

import dataclasses
import os

from keras_ddpm.sampling_options import CHAIN_OPTIONS
from keras_ddpm.sampling_options import DEFAULTS
from keras_ddpm.saving import load_model_file

# The FID feature networks and the resizing conventions (`keras_ddpm.fid` explains each).
FEATURES = ("inception-2015", "keras-imagenet")
RESIZES = ("clean", "pytorch-fid", "tensorflow")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`python cli.py eval`'s options, by the same names (`--n-eval-imgs` is `num_images`).

    The generated images come from `model_path` (sampled, and saved into `gen_data_dir` when it
    is given) or from the folder `gen_data_dir`; the real ones from `dataset` (a dataset name
    or a folder, as `train` takes it), from the folder `real_data_dir`, or from precomputed
    statistics `real_stats` (an .npz with `mu` and `sigma`, as pytorch-fid and clean-fid write).
    """

    model_path: str = None
    gen_data_dir: str = None
    dataset: str = None
    real_data_dir: str = None
    real_stats: str = None
    data_dir: str = None  # tfds data directory
    crop: str = "auto"  # of the real images, as in `train`
    num_images: int = 10_000  # generated images, and real images at most
    batch_size: int = 50  # images per sampling batch and per Inception pass
    # The sampling of `model_path` (`SamplingOptions`; batch i uses seed + i).
    sampler: str = DEFAULTS.sampler
    steps: int = DEFAULTS.steps
    eta: float = DEFAULTS.eta
    skip: str = DEFAULTS.skip
    variance: str = DEFAULTS.variance
    guidance: float = DEFAULTS.guidance
    seed: int = DEFAULTS.seed
    use_ema: bool = DEFAULTS.use_ema
    features: str = "inception-2015"  # or "keras-imagenet" (`fid.FEATURES`)
    resize: str = "clean"  # or "pytorch-fid", "tensorflow" (`fid.RESIZES`)
    inception_weights: str = None  # the network's published weights, or a local file
    save_stats: str = None  # an .npz for the generated images' statistics (mu, sigma)
    cache_dir: str = None  # of the reference statistics [default: `fid.default_cache_dir()`]
    use_cache: bool = True
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def check_sources(self):
        """Raises ValueError or FileNotFoundError (one sentence) unless the config names one source
        of generated images and one of real images that can be read."""
        real_sources = (self.dataset, self.real_data_dir, self.real_stats)
        if sum(source is not None for source in real_sources) != 1:
            raise ValueError(
                "Pass exactly one of --dataset NAME, --real-data-dir DIR or --real-stats FILE for "
                "the real images."
            )
        if self.model_path is None and self.gen_data_dir is None:
            raise ValueError(
                "Pass --model PATH to sample images, or --gen-data-dir DIR of generated images."
            )
        if self.real_data_dir is not None and not os.path.isdir(self.real_data_dir):
            raise FileNotFoundError(f"No image folder at {self.real_data_dir}.")
        if self.real_stats is not None and not os.path.isfile(self.real_stats):
            raise FileNotFoundError(f"No statistics file at {self.real_stats}.")
        if self.model_path is None and not os.path.isdir(self.gen_data_dir):
            raise FileNotFoundError(
                f"No image folder at {self.gen_data_dir}; pass --model PATH to generate images "
                "into it."
            )

    def sample_request(self, model):
        """The `SampleRequest` that draws each batch of generated images, checked for `model`."""
        from keras_ddpm.sample_request import SampleRequest

        batch_size = min(self.batch_size, self.num_images)
        chain = {name: getattr(self, name) for name in CHAIN_OPTIONS}
        request = SampleRequest(**chain, batch_size=batch_size)
        return request.resolve(model, max_images=batch_size)

    def generated_batches(self, model, save_dir=None):
        """`num_images` uint8 images from `model` in batches, each drawn by `sample_request(model)`
        (batch i with seed + i), also written to `save_dir` as numbered PNGs when given."""
        from keras_ddpm import fid

        request = self.sample_request(model)
        return fid.model_batches(
            model,
            self.num_images,
            self.batch_size,
            save_dir=save_dir,
            seed=request.seed,
            **request.generate_options(),
        )


def evaluate(config, echo=None):
    """FID and KID of `config` (an `EvalConfig`): the record `python cli.py eval` prints and writes.

    The record holds `fid.compare`'s numbers (fid, kid, kid_std, num_generated, num_real) and
    where they came from: the generated and real sources, the sampling options (None for a
    folder), the seed, the image shape, the feature network, its resizing and weights, the
    reference cache file, the backend and `fid.note` (which published numbers it compares with).
    With `save_stats`, the generated images' statistics are written there as an .npz that
    pytorch-fid and clean-fid read. `echo(message)` reports progress (default: print).
    """
    from keras_ddpm import backend
    from keras_ddpm import fid

    echo = echo or print
    config.check_sources()
    extractor = fid.feature_extractor(
        config.features,
        config.inception_weights,
        config.resize,
        min(config.batch_size, config.num_images),
    )
    if config.model_path:
        model = load_model_file(config.model_path)
        size, _, channels = model.image_shape
        generated_batches = config.generated_batches(model, save_dir=config.gen_data_dir)
        generated_source = config.model_path
        sampling = _sampling_record(config.sample_request(model))
    else:
        from keras_ddpm.data import list_images
        from keras_ddpm.data import read_image

        first = read_image(list_images(config.gen_data_dir)[0])
        size, channels = first.shape[0], first.shape[-1]
        generated_batches = fid.folder_batches(
            config.gen_data_dir, config.batch_size, size, channels
        )
        generated_source, sampling = config.gen_data_dir, None
    real_source = config.dataset or config.real_data_dir or config.real_stats
    echo(f"generated images from {generated_source} ({size}x{size}x{channels})")
    generated = fid.compute_statistics(
        generated_batches, extractor, config.num_images, progress=True
    )
    if config.save_stats:
        key = {"source": generated_source, "image_shape": [size, size, channels]}
        generated.save(config.save_stats, {**key, **extractor.describe()})
        echo(f"wrote the generated images' statistics to {config.save_stats}")
    if config.real_stats:
        real, cached = fid.load_statistics(config.real_stats, extractor), None
        count = real.num_images if real.num_images is not None else "an unknown number of"
        echo(f"real statistics from {real_source} ({count} images)")
    else:
        echo(f"real images from {real_source}")
        cache_dir = (config.cache_dir or fid.default_cache_dir()) if config.use_cache else None
        real, cached = fid.reference_statistics(
            real_source,
            size,
            channels,
            config.num_images,
            extractor,
            config.batch_size,
            cache_dir=cache_dir,
            progress=True,
            crop=config.crop,
            data_dir=config.data_dir,
        )
    results = fid.compare(generated, real, config.kid_subsets, config.kid_subset_size)
    return {
        **results,
        "generated": generated_source,
        "real": real_source,
        "sampling": sampling,
        "seed": config.seed,
        "image_shape": [size, size, channels],
        "features": extractor.features,
        "resize": extractor.resize,
        "inception_weights": extractor.name or "random",
        "reference_cache": cached,
        "backend": backend.backend_name(),
        "note": fid.note(extractor.features, extractor.resize),
    }


def _sampling_record(request):
    """The sampler options a resolved request draws with, defaults filled in."""
    from keras_ddpm.sampling_options import default_skip

    return {
        "sampler": request.sampler,
        "steps": request.steps,
        "eta": request.eta,
        "skip": request.skip or default_skip(request.sampler),
        "variance": request.variance,
        "guidance": request.guidance,
    }
