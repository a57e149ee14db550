"""`DiffusionModel`: the UNet, its EMA copy, the noise schedule, the loss and `generate()`."""

import keras
import numpy as np
from keras import ops

from keras_ddpm import backend
from keras_ddpm import samplers
from keras_ddpm.config import Preset
from keras_ddpm.config import get_preset
from keras_ddpm.config import preset_from_dict
from keras_ddpm.optimizers import make_optimizer
from keras_ddpm.schedules import NoiseSchedule
from keras_ddpm.unet import build_unet


@keras.saving.register_keras_serializable(package="keras_ddpm")
class DiffusionModel(keras.Model):
    """A denoising diffusion model trained with `fit` and sampled with `generate`.

    Args:
        config: a `keras_ddpm.config.Preset` (or its dict form): the UNet, the
            diffusion process and the training hyper-parameters (EMA decay among them).
        seed: seed of the generator that draws training timesteps, noise and label dropout.

    `model.network` is the trained UNet; `model.ema_network` holds the exponential moving
    average of its weights, updated after every optimizer step and used by `generate`.
    """

    def __init__(self, config, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, Preset) else preset_from_dict(config)
        self.seed = seed
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.network = build_unet(self.config.unet, name="network")
        self.ema_network = build_unet(self.config.unet, name="ema_network")
        self.ema_network.trainable = False
        for ema_weight, weight in zip(self.ema_network.weights, self.network.weights):
            ema_weight.assign(ops.copy(weight.value))  # a copy: JAX must not see one buffer twice
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._compiled_steps = {}
        self.built = True

    @classmethod
    def from_preset(cls, name, seed=None, **overrides):
        """Builds the named preset, with any config field overridden by name (`num_classes=10`)."""
        return cls(get_preset(name).replace(**overrides), seed=seed)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "seed": self.seed}

    @property
    def num_classes(self):
        return self.config.unet.num_classes

    @property
    def image_shape(self):
        unet = self.config.unet
        return (unet.image_size, unet.image_size, unet.image_channels)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def compile(self, optimizer=None, jit_compile=None, **kwargs):
        """`optimizer` defaults to the preset's: Adam with warm-up and gradient clipping.

        `jit_compile` defaults to `backend.default_jit_compile()` (XLA where it helps).
        """
        if jit_compile is None:
            jit_compile = backend.default_jit_compile()
        super().compile(optimizer=optimizer or make_optimizer(self.config.train), jit_compile=jit_compile, **kwargs)

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:  # not compiled
            return None
        return {"optimizer": keras.saving.serialize_keras_object(self.optimizer)}

    def compile_from_config(self, config):
        self.compile(optimizer=keras.saving.deserialize_keras_object(config["optimizer"]))
        self.optimizer.build(self.trainable_variables)  # so the saved optimizer state loads

    def call(self, inputs, training=False):
        """[x_t, t] or [x_t, t, labels] -> the trained network's output."""
        return self.network(inputs, training=training)

    # Training.

    def _gather(self, array, timesteps):
        """Coefficient `array[t]` for each example, shaped to broadcast over (N, H, W, C)."""
        return ops.take(ops.convert_to_tensor(array.astype(np.float32)), timesteps)[:, None, None, None]

    def q_sample(self, x_start, timesteps, noise):
        """x_t ~ q(x_t | x_0), DDPM eq. 4: sqrt(a_t) x_0 + sqrt(1 - a_t) eps."""
        return (
            self._gather(self.schedule.sqrt_alphas_cumprod, timesteps) * x_start
            + self._gather(self.schedule.sqrt_one_minus_alphas_cumprod, timesteps) * noise
        )

    def compute_diffusion_loss(self, images, labels=None, training=True):
        """L_simple (DDPM eq. 14) generalised to the configured target: E ||target - f(x_t, t)||^2.

        t ~ U{0, ..., T-1}, eps ~ N(0, I); the target is eps, x_0, or v = sqrt(a) eps - sqrt(1 - a) x_0.
        For class-conditional models the label becomes the null class with probability
        `class_dropout` (classifier-free guidance training). Backend-neutral: randomness
        comes only from `self.seed_generator`.
        """
        images = ops.cast(images, "float32")
        batch = ops.shape(images)[0]
        timesteps = keras.random.randint((batch,), 0, self.schedule.timesteps, dtype="int32", seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        x_t = self.q_sample(images, timesteps, noise)
        inputs = [x_t, timesteps]
        if self.num_classes:
            if labels is None:
                labels = ops.full((batch,), self.num_classes, dtype="int32")
            labels = ops.cast(ops.reshape(labels, (batch,)), "int32")
            dropped = keras.random.uniform((batch,), seed=self.seed_generator) < self.config.diffusion.class_dropout
            inputs.append(ops.where(dropped, self.num_classes, labels))
        output = ops.cast(self.network(inputs, training=training), "float32")
        prediction = self.config.diffusion.prediction
        if prediction == "epsilon":
            target = noise
        elif prediction == "x0":
            target = images
        else:
            target = (
                self._gather(self.schedule.sqrt_alphas_cumprod, timesteps) * noise
                - self._gather(self.schedule.sqrt_one_minus_alphas_cumprod, timesteps) * images
            )
        return ops.mean(ops.square(output - target))

    def train_step(self, *args):
        return backend.train_step(self, *args)

    def ema_update_value(self, ema_value, value):
        """EMA of the weights: ema <- decay * ema + (1 - decay) * w."""
        decay = self.config.train.ema_decay
        return decay * ema_value + (1.0 - decay) * value

    def update_ema(self):
        for ema_weight, weight in zip(self.ema_network.weights, self.network.weights):
            ema_weight.assign(self.ema_update_value(ema_weight.value, weight.value))

    def ema_variable_pairs(self):
        """(index in non_trainable_variables, index in trainable_variables) per EMA weight."""
        trainable = {id(v): i for i, v in enumerate(self.trainable_variables)}
        non_trainable = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        return [
            (non_trainable[id(ema_weight)], trainable[id(weight)])
            for ema_weight, weight in zip(self.ema_network.weights, self.network.weights)
        ]

    # Sampling.

    def _step_function(self, network, prediction, clip_denoised, guided):
        """A compiled (x_t, t, coefficients, noise, labels, guidance) -> (x_prev, x0_hat)."""
        key = (network.name, prediction, clip_denoised, guided)
        if key not in self._compiled_steps:

            def step(x_t, timesteps, coefficients, noise, labels, guidance):
                if labels is None:
                    output = network([x_t, timesteps], training=False)
                elif guided:
                    null = ops.full(ops.shape(labels), self.num_classes, dtype="int32")
                    both = network(
                        [ops.concatenate([x_t, x_t]), ops.concatenate([timesteps, timesteps]), ops.concatenate([labels, null])],
                        training=False,
                    )
                    conditional, unconditional = ops.split(both, 2)
                    output = samplers.guided_output(conditional, unconditional, guidance)
                else:
                    output = network([x_t, timesteps, labels], training=False)
                output = ops.cast(output, "float32")
                return samplers.denoise_step(x_t, output, coefficients, noise, prediction, clip_denoised)

            self._compiled_steps[key] = backend.compile_inference(step, network.weights)
        return self._compiled_steps[key]

    def _labels_for(self, class_labels, num_images):
        if not self.num_classes:
            if class_labels is not None:
                raise ValueError("This model is unconditional; it takes no class labels.")
            return None
        if class_labels is None:
            return np.full((num_images,), self.num_classes, dtype=np.int32)  # the null label
        labels = np.asarray(class_labels, dtype=np.int64).reshape(-1)
        if labels.size == 1:
            labels = np.full((num_images,), labels.item())
        if labels.shape != (num_images,):
            raise ValueError(f"Expected one class label or {num_images}. Received: {labels.size} labels")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"Class labels must be in [0, {self.num_classes - 1}]. Received: {sorted(set(labels.tolist()))}"
            )
        return labels.astype(np.int32)

    def generate(
        self,
        num_images=None,
        noise=None,
        sampler="ddim",
        steps=50,
        eta=0.0,
        seed=None,
        class_labels=None,
        guidance=0.0,
        skip="uniform",
        variance="fixed_small",
        clip_denoised=True,
        use_ema=True,
        callback=None,
        return_uint8=True,
    ):
        """Samples images by running the reverse process from x_T.

        Args:
            num_images: how many images; may be omitted when `noise` is given.
            noise: x_T, shape (N, H, W, C); drawn from `seed` when omitted.
            sampler: "ddim" or "ddpm".
            steps: number of denoising steps (DDPM: a uniform sub-sequence when < T).
            eta: DDIM's eta (0: deterministic; 1: DDPM-like).
            seed: seed for x_T and the per-step noise; the same seed gives the same images.
            class_labels: one label or one per image (class-conditional models).
            guidance: classifier-free guidance weight w (0: plain conditional sampling).
            skip: DDIM timestep skip, "uniform" or "quadratic".
            variance: DDPM's sigma_t^2, "fixed_small" (beta-tilde) or "fixed_large" (beta).
            clip_denoised: clip the predicted x_0 to [-1, 1] at every step.
            use_ema: sample with the EMA weights (default) or the trained ones.
            callback: called as `callback(step, t, x_t, x0_hat)` after every step.
            return_uint8: uint8 images in [0, 255] (default) or float32 in [-1, 1].

        Returns:
            A numpy array (N, H, W, C).
        """
        plan = samplers.make_plan(self.schedule, sampler, steps, eta, skip, variance)
        seed_generator = keras.random.SeedGenerator(seed)
        if noise is None:
            if not num_images or num_images < 1:
                raise ValueError(f"num_images must be a positive integer. Received: num_images={num_images}")
            x = keras.random.normal((num_images, *self.image_shape), seed=seed_generator)
        else:
            x = ops.convert_to_tensor(np.asarray(noise, dtype=np.float32))
            if tuple(x.shape[1:]) != self.image_shape or (num_images and x.shape[0] != num_images):
                raise ValueError(f"noise must have shape (N, {', '.join(map(str, self.image_shape))}). Received: {tuple(x.shape)}")
            num_images = x.shape[0]
        labels = self._labels_for(class_labels, num_images)
        guided = labels is not None and guidance != 0
        if labels is not None:
            labels = ops.convert_to_tensor(labels)
        network = self.ema_network if use_ema else self.network
        step = self._step_function(network, self.config.diffusion.prediction, clip_denoised, guided)
        coefficients = ops.convert_to_tensor(plan.coefficients())
        guidance = ops.convert_to_tensor(guidance, "float32")
        zeros = ops.zeros_like(x)
        for i, t in enumerate(plan.timesteps):
            noise_i = keras.random.normal(ops.shape(x), seed=seed_generator) if plan.sigma[i] > 0 else zeros
            timesteps = ops.full((num_images,), int(t), dtype="int32")
            x, x0 = step(x, timesteps, coefficients[i], noise_i, labels, guidance)
            if callback is not None:
                callback(i, int(t), x, x0)
        images = ops.convert_to_numpy(x)
        return to_uint8(images) if return_uint8 else images


def to_uint8(images):
    """[-1, 1] floats -> uint8 [0, 255]."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def load_model(path):
    """Loads a `.keras` file saved from a `DiffusionModel`, on any backend (safe mode on)."""
    return keras.saving.load_model(path, safe_mode=True)
