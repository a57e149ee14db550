"""What `python cli.py sample --mode MODE` draws: uint8 tiles (N, H, W, C) or frames.

The modes (`sampling_options.MODES`):

    normal             a batch of samples (a column per class for class-conditional models)
    denoising_process  frames of x_t along one reverse chain (an animated GIF)
    interpolation      two real images mixed at several weights (DDPM sec. 4.3 in pixel space at
                       x_t; DDIM sec. 5.3: slerp between DDIM-inverted x_T)
    coarse_to_fine     DDPM Figure 9: one x_t per row, several x_0 ~ p(x_0 | x_t) per row
    sequence           the predicted x_0 at evenly spaced steps of one chain (DDPM Figure 6)
    inpainting         a masked region of a real image filled by the model (replacement method)

`generate_kwargs` are `DiffusionModel.generate`'s sampler options (sampler, steps, eta, skip,
variance, guidance, class_labels, ...).
"""

import numpy as np

from keras_ddpm import samplers
from keras_ddpm.diffusion_model import to_uint8
from keras_ddpm.sampling_options import default_skip
from keras_ddpm.sampling_options import default_steps

COARSE_TO_FINE_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.1, 0.025)


def load_real_images(dataset, indices, image_size, image_channels, data_dir=None, crop="auto"):
    """Images `indices` (in the dataset's order, unshuffled) as float32 [-1, 1],
    (len(indices), H, W, C)."""
    from keras_ddpm import data

    batches = data.make_dataset(
        dataset,
        image_size,
        image_channels,
        1,
        shuffle=False,
        repeat=False,
        data_dir=data_dir,
        crop=crop,
        drop_remainder=False,
        prefetch_to_device=None,
    )
    images = []
    for index in indices:
        if index < 0:
            raise ValueError(f"Image indices must be non-negative. Received: {index}")
        if hasattr(batches, "skip"):  # tf.data
            found = list(batches.skip(index).take(1).as_numpy_iterator())
        else:  # data.arrays.ArrayBatches (no TensorFlow)
            found = [batches[index]] if index < batches.num_batches else []
        if not found:
            raise ValueError(f"Dataset {dataset!r} has no image at index {index}.")
        images.append(found[0][0])
    return np.stack(images).astype(np.float32)


def class_grid_labels(model, num_images, class_label=None):
    """Labels and grid width for `normal`: one label for all, or (conditional, no label) class i % K
    in column i % K, so each column of the grid is one class (one row of classes 0..N-1 for
    N < K images; `SampleRequest.resolve` makes N a multiple of K otherwise)."""
    if not model.num_classes or class_label is not None:
        return class_label, None
    return np.arange(num_images) % model.num_classes, min(num_images, model.num_classes)


def normal(model, num_images, seed=0, **generate_kwargs):
    return model.generate(num_images, seed=seed, **generate_kwargs)


def _plan_length(model, start_timestep=None, **generate_kwargs):
    settings = samplers.SamplerSettings.pick(generate_kwargs)
    return len(settings.plan(model.schedule, start_timestep))


def _evenly_spaced_steps(num_steps, count):
    """`count` step indices from 0 to num_steps - 1, both ends included (fewer when
    num_steps < count)."""
    return sorted(
        set(np.round(np.linspace(0, num_steps - 1, max(count, 1))).astype(int).tolist())
        | {num_steps - 1}
    )


def denoising_process(model, num_images, num_frames=20, seed=0, **generate_kwargs):
    """(frames, N, H, W, C) uint8: x_T, then x_t after evenly spaced steps, the last frame the
    samples."""
    if num_frames < 2:
        raise ValueError(
            f"A denoising GIF needs at least 2 frames. Received: num_frames={num_frames}"
        )
    x_T = (
        np.random.default_rng(seed)
        .standard_normal((num_images, *model.image_shape))
        .astype(np.float32)
    )
    frames = [to_uint8(np.clip(x_T, -1.0, 1.0))]
    record = _evenly_spaced_steps(_plan_length(model, **generate_kwargs), num_frames - 1)

    def keep(step, t, x, x0):
        frames.append(to_uint8(np.clip(np.asarray(x), -1.0, 1.0)))

    model.generate(noise=x_T, seed=seed, callback=keep, callback_steps=record, **generate_kwargs)
    return np.stack(frames)


def sequence(model, num_images, num_frames=10, seed=0, **generate_kwargs):
    """(N, frames, H, W, C) uint8: x0_hat after evenly spaced steps of each chain (last: the
    sample)."""
    record = _evenly_spaced_steps(_plan_length(model, **generate_kwargs), num_frames)
    predictions = []

    def keep(step, t, x, x0):
        predictions.append(to_uint8(np.asarray(x0)))

    model.generate(num_images, seed=seed, callback=keep, callback_steps=record, **generate_kwargs)
    return np.stack(predictions, axis=1)


def noise_images(model, images, timestep, noise):
    """x_t ~ q(x_t | x_0) for one timestep (DDPM eq. 4), float32 numpy."""
    a = model.schedule.alphas_cumprod[timestep]
    return (np.sqrt(a) * images + np.sqrt(1.0 - a) * noise).astype(np.float32)


def slerp(a, b, weights):
    """Spherical interpolation per weight between two arrays (as DDIM's code does for x_T)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    theta = np.arccos(np.clip(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)), -1.0, 1.0))
    if theta < 1e-6:
        return np.stack([(1 - w) * a + w * b for w in weights]).astype(np.float32)
    return np.stack(
        [(np.sin((1 - w) * theta) * a + np.sin(w * theta) * b) / np.sin(theta) for w in weights]
    ).astype(np.float32)


def interpolation(
    model, image1, image2, timestep=None, num_points=10, space="pixel", seed=0, **generate_kwargs
):
    """[image 1, mixes at weights linspace(0, 1, num_points)..., image 2], uint8
    (num_points + 2, H, W, C).

    space="pixel": both images noised to `timestep` with one shared noise, mixed linearly, denoised
    from `timestep` (DDPM sec. 4.3). space="latent": both DDIM-inverted to x_T, slerped, denoised
    with DDIM eta = 0 (DDIM sec. 5.3); sampler options other than steps/skip are ignored.
    The tiles at weights 0 and 1 are the reconstructions of image 1 and image 2.
    """
    if num_points < 2:
        raise ValueError(
            f"Interpolation needs at least 2 points. Received: num_points={num_points}"
        )
    weights = np.linspace(0.0, 1.0, num_points)
    images = np.stack([image1, image2]).astype(np.float32)
    if space == "pixel":
        timestep = model.schedule.timesteps // 2 if timestep is None else timestep
        if not 0 <= timestep < model.schedule.timesteps:
            raise ValueError(
                f"--interpolate-at must be in [0, {model.schedule.timesteps - 1}]. "
                f"Received: {timestep}"
            )
        noise = np.random.default_rng(seed).standard_normal(model.image_shape).astype(np.float32)
        x1, x2 = noise_images(model, images, timestep, noise)
        mixes = np.stack([(1 - w) * x1 + w * x2 for w in weights])
        samples = model.generate(noise=mixes, seed=seed, start_timestep=timestep, **generate_kwargs)
    elif space == "latent":
        steps = generate_kwargs.get("steps") or default_steps("ddim")
        skip = generate_kwargs.get("skip") or default_skip("ddim")
        labels = generate_kwargs.get("class_labels")
        x_T = model.invert(images, steps=steps, skip=skip, class_labels=labels)
        kept = {
            k: v
            for k, v in generate_kwargs.items()
            if k in ("class_labels", "guidance", "clip_denoised", "use_ema")
        }
        samples = model.generate(
            noise=slerp(x_T[0], x_T[1], weights),
            sampler="ddim",
            steps=steps,
            eta=0.0,
            skip=skip,
            **kept,
        )
    else:
        raise ValueError(f"space must be 'pixel' or 'latent'. Received: space={space!r}")
    return np.concatenate([to_uint8(images[:1]), samples, to_uint8(images[1:])])


def default_coarse_timesteps(num_train_timesteps):
    """DDPM Figure 9's rows, t = T, 3T/4, T/2, T/4, plus two close to t = 0 (T/10 and T/40)."""
    steps = [
        min(num_train_timesteps - 1, int(round(f * num_train_timesteps)))
        for f in COARSE_TO_FINE_FRACTIONS
    ]
    return sorted(set(steps), reverse=True)


def coarse_to_fine(model, image, timesteps=None, num_samples=8, seed=0, **generate_kwargs):
    """DDPM Figure 9: row r shares x_t (t = timesteps[r], one noising of `image`) and holds
    [x_t, num_samples samples x_0 ~ p(x_0 | x_t)]; uint8 (rows, num_samples + 1, H, W, C).
    Needs a stochastic sampler (ddpm, or ddim with eta > 0)."""
    timesteps = (
        default_coarse_timesteps(model.schedule.timesteps) if timesteps is None else list(timesteps)
    )
    plan = samplers.SamplerSettings.pick(generate_kwargs).plan(model.schedule, max(timesteps))
    if not plan.stochastic:
        raise ValueError(
            "coarse_to_fine draws several x_0 from one x_t, so it needs a stochastic sampler: "
            "--sampler ddpm, or --sampler ddim with --eta > 0."
        )
    noise = np.random.default_rng(seed).standard_normal(model.image_shape).astype(np.float32)
    rows = []
    for row, t in enumerate(timesteps):
        x_t = noise_images(model, image[None], t, noise)
        samples = model.generate(
            noise=np.repeat(x_t, num_samples, axis=0),
            seed=seed + 1 + row,
            start_timestep=t,
            **generate_kwargs,
        )
        rows.append(np.concatenate([to_uint8(np.clip(x_t, -1.0, 1.0)), samples]))
    return np.stack(rows)


def inpainting(model, image, fill_mask, num_samples=4, seed=0, **generate_kwargs):
    """[image, image with the region grayed out, num_samples fills], uint8
    (num_samples + 2, H, W, C).

    `fill_mask` (H, W, 1), 1 where the model draws. Replacement method (Song et al. 2021, SDE
    paper app. I; RePaint without resampling): after each step the known pixels are set to the
    image noised to the step's timestep, so the last step leaves them exactly equal to the image.
    """
    fill_mask = np.asarray(fill_mask, np.float32)
    if fill_mask.shape[:2] != model.image_shape[:2]:
        raise ValueError(
            f"The mask must be {model.image_shape[0]}x{model.image_shape[1]}. "
            f"Received: {fill_mask.shape[:2]}"
        )
    known = 1.0 - fill_mask[..., :1]
    samples = model.generate(
        num_samples, seed=seed, known=(image[None], known[None]), **generate_kwargs
    )
    masked = image * known  # 0 (mid-gray) where the model draws
    return np.concatenate([to_uint8(image[None]), to_uint8(masked[None]), samples])
