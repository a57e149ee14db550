"""`DiffusionModel`: the UNet, its EMA copy, the noise schedule, the loss and `generate()`."""

import contextvars
import os

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
from keras_ddpm.schedules import min_snr_weights
from keras_ddpm.unet import build_unet

# True while `load_model` builds a model whose every weight the file sets next: its kernels start
# as zeros, not as random draws (on JAX each new shape's draw is a program to compile, most of the
# time a load took).
_WEIGHTS_FROM_FILE = contextvars.ContextVar("weights_from_file", default=False)


@keras.saving.register_keras_serializable(package="keras_ddpm")
class DiffusionModel(keras.Model):
    """A denoising diffusion model trained with `fit` and sampled with `generate`.

    Args:
        config: a `keras_ddpm.config.Preset` (or its dict form): the UNet, the
            diffusion process and the training hyper-parameters (EMA decay among them).
        seed: seed of the generator that draws training timesteps, noise and label dropout.
        trained_steps: the optimizer steps the weights were trained for, recorded in files saved
            without an optimizer (`for_inference`); see the `trained_steps` property.

    `model.network` is the trained UNet; `model.ema_network` holds the exponential moving
    average of its weights, updated after every optimizer step and used by `generate`.
    """

    def __init__(self, config, seed=None, kernel_initializer=None, trained_steps=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, Preset) else preset_from_dict(config)
        self.seed = seed
        self._recorded_steps = trained_steps
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        # The per-timestep tables of the loss (q_sample's coefficients, Min-SNR's weights) as
        # float32 tensors, made once and outside any trace (a traced step captures them):
        # converting a NumPy table at every step was a copy from host memory on PyTorch, which a
        # CUDA-graph capture of the step cannot record.
        self._tables = {
            name: ops.convert_to_tensor(getattr(self.schedule, name).astype(np.float32))
            for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")
        }
        gamma = self.config.diffusion.snr_gamma
        if gamma:
            weights = min_snr_weights(
                self.schedule.alphas_cumprod, gamma, self.config.diffusion.prediction
            )
            self._tables["loss_weight"] = ops.convert_to_tensor(weights.astype(np.float32))
        # kernel_initializer (not saved): "zeros" where every weight is set next (an imported
        # checkpoint's), skipping the random draws; see `build_unet`.
        self.network = build_unet(self.config.unet, "network", kernel_initializer)
        self.ema_network = build_unet(self.config.unet, "ema_network", kernel_initializer)
        self.ema_network.trainable = False
        for ema_weight, weight in zip(self.ema_network.weights, self.network.weights):
            ema_weight.assign(ops.copy(weight.value))  # a copy: JAX must not see one buffer twice
        self.seed_generator = backend.seed_generator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._compiled_steps = {}
        self.built = True

    @classmethod
    def from_preset(cls, name, seed=None, **overrides):
        """Builds the named preset, with any config field overridden by name (`num_classes=10`)."""
        return cls(get_preset(name).replace(**overrides), seed=seed)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        if _WEIGHTS_FROM_FILE.get():
            config = {**config, "kernel_initializer": "zeros"}
        return super().from_config(config, custom_objects=custom_objects)

    def for_inference(self):
        """An uncompiled copy with the same trained and EMA weights and no optimizer state: what
        ships (about half a checkpoint's size: Adam's two moments are left out)."""
        copy = type(self)(
            self.config,
            seed=self.seed,
            kernel_initializer="zeros",  # every weight is set next
            trained_steps=self.trained_steps,
        )
        copy.network.set_weights(self.network.get_weights())
        copy.ema_network.set_weights(self.ema_network.get_weights())
        return copy

    def get_config(self):
        return {
            **super().get_config(),
            "config": self.config.to_dict(),
            "seed": self.seed,
            "trained_steps": self.trained_steps,
        }

    @property
    def trained_steps(self):
        """The optimizer steps the weights have taken: the optimizer's count once compiled (a
        checkpoint's), else the count the file recorded (an exported model's), or None when
        unknown (a file exported before the count was recorded). `config.train.train_steps` is
        the run's plan, not this."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:  # (a MirroredVariable under tf.distribute: no int())
            return int(ops.convert_to_numpy(optimizer.iterations))
        return self._recorded_steps

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
        super().compile(
            optimizer=optimizer or make_optimizer(self.config.train),
            jit_compile=jit_compile,
            **kwargs,
        )
        backend.after_compile(self)  # TensorFlow: the optimizer built before the first traced step

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:  # not compiled
            return None
        return {
            "optimizer": _portable_optimizer_config(
                keras.saving.serialize_keras_object(self.optimizer)
            )
        }

    def compile_from_config(self, config):
        optimizer_config = _portable_optimizer_config(config["optimizer"])
        self.compile(optimizer=keras.saving.deserialize_keras_object(optimizer_config))
        self.optimizer.build(self.trainable_variables)  # so the saved optimizer state loads

    def call(self, inputs, training=False):
        """[x_t, t] or [x_t, t, labels] -> the trained network's output."""
        return self.network(inputs, training=training)

    # Training.

    def _gather(self, name, timesteps):
        """The schedule's coefficient `name` at t for each example, shaped to broadcast over
        (N, H, W, C)."""
        return ops.take(self._tables[name], timesteps)[:, None, None, None]

    def q_sample(self, x_start, timesteps, noise):
        """x_t ~ q(x_t | x_0), DDPM eq. 4: sqrt(a_t) x_0 + sqrt(1 - a_t) eps."""
        return (
            self._gather("sqrt_alphas_cumprod", timesteps) * x_start
            + self._gather("sqrt_one_minus_alphas_cumprod", timesteps) * noise
        )

    def compute_diffusion_loss(self, images, labels=None, training=True):
        """L_simple (DDPM eq. 14) generalised to the configured target: E ||target - f(x_t, t)||^2.

        t ~ U{0, ..., T-1}, eps ~ N(0, I); the target is eps, x_0, or
        v = sqrt(a) eps - sqrt(1 - a) x_0.
        For class-conditional models the label becomes the null class with probability
        `class_dropout` (classifier-free guidance training). Backend-neutral: randomness
        comes only from `self.seed_generator` (`training_draws`) and dropout's.
        """
        # the schedule math and the loss stay float32 under mixed precision
        return self.diffusion_loss(*self.step_inputs(images, labels), training=training)

    def training_draws(self, images, labels=None):
        """The random part of a training step for `images`: (t, eps, labels after class dropout;
        None for an unconditional model), drawn for the whole batch, so that a step split into
        micro-batches (`grad_accum`) sees exactly the draws of one unsplit step."""
        batch = ops.shape(images)[0]
        replica, replicas = backend.replica_context()

        def draw(sample, shape):
            # Under tf.distribute every replica draws for the global batch (the same numbers: the
            # seed state is mirrored) and keeps its slice, so each example gets its own t and eps
            # and a step on N devices sees exactly the draws of one device.
            if replicas == 1:
                return sample((batch, *shape))
            return ops.take(
                sample((batch * replicas, *shape)), ops.arange(batch) + replica * batch, axis=0
            )

        timesteps = draw(
            lambda s: keras.random.randint(
                s, 0, self.schedule.timesteps, dtype="int32", seed=self.seed_generator
            ),
            (),
        )
        noise = draw(
            lambda s: keras.random.normal(s, seed=self.seed_generator), ops.shape(images)[1:]
        )
        if not self.num_classes:
            return timesteps, noise, None
        if labels is None:
            labels = ops.full((batch,), self.num_classes, dtype="int32")
        labels = ops.cast(ops.reshape(labels, (batch,)), "int32")
        dropped = (
            draw(lambda s: keras.random.uniform(s, seed=self.seed_generator), ())
            < self.config.diffusion.class_dropout
        )
        return timesteps, noise, ops.where(dropped, self.num_classes, labels)

    def diffusion_loss(self, images, timesteps, noise, labels=None, training=True):
        """`compute_diffusion_loss` for given draws (`training_draws`); images float32."""
        x_t = self.q_sample(images, timesteps, noise)
        inputs = [x_t, timesteps] if labels is None else [x_t, timesteps, labels]
        output = ops.cast(backend.call_network(self.network, inputs, training), "float32")
        prediction = self.config.diffusion.prediction
        if prediction == "epsilon":
            target = noise
        elif prediction == "x0":
            target = images
        else:
            target = (
                self._gather("sqrt_alphas_cumprod", timesteps) * noise
                - self._gather("sqrt_one_minus_alphas_cumprod", timesteps) * images
            )
        squared = ops.square(output - target)
        if "loss_weight" in self._tables:  # Min-SNR: w(t) per example (every example the same size)
            squared = self._gather("loss_weight", timesteps) * squared
        return ops.mean(squared)

    def step_inputs(self, images, labels=None):
        """`diffusion_loss`'s arguments for a whole training step: (images as float32, t, eps,
        labels), the draws made for the whole batch (`training_draws`). A step of
        `grad_accum` micro-batches takes slices of them (`backend.common.micro_batch`)."""
        images = ops.cast(images, "float32")
        return (images, *self.training_draws(images, labels))

    def train_step(self, *args):
        return backend.train_step(self, *args)

    def make_train_function(self, force=False):
        # JAX: several steps in one compiled call (`backend.make_train_function`); else Keras'.
        made = backend.make_train_function(self, force)
        return made if made is not None else super().make_train_function(force)

    def ema_decay_at(self, iterations):
        """The EMA decay after optimizer update number `iterations` (1-based).

        Without warm-up, `ema_decay`. With `ema_warmup_power` p > 0, diffusers' EMA warm-up
        (after @crowsonkb): min(ema_decay, 1 - (1 + n)^-p) with n = iterations - 1, so the
        first update copies the weights and the decay grows as training goes on.
        """
        train = self.config.train
        if not train.ema_warmup_power:
            return train.ema_decay
        n = ops.maximum(ops.cast(iterations, "float32") - 1.0, 0.0)
        return ops.minimum(train.ema_decay, 1.0 - ops.power(1.0 + n, -train.ema_warmup_power))

    def ema_update_value(self, ema_value, value, decay):
        """EMA of the weights: ema <- decay * ema + (1 - decay) * w."""
        return decay * ema_value + (1.0 - decay) * value

    def update_ema(self):
        """One EMA step of every weight, with this step's decay (`ema_decay_at`), in place."""
        decay = self.ema_decay_at(self.optimizer.iterations)
        for ema_weight, weight in zip(self.ema_network.weights, self.network.weights):
            ema_weight.assign(self.ema_update_value(ema_weight.value, weight.value, decay))

    def _seed_states(self):
        """The state variables of every seed generator (ours, dropout's), in a fixed order."""
        return [v for v in self.non_trainable_variables if v.path.endswith("seed_generator_state")]

    def save_own_variables(self, store):
        # Keras saves no seed-generator state; a checkpoint must, so a resumed run continues
        # the random stream instead of repeating it.
        super().save_own_variables(store)
        states = self._seed_states()
        if states:
            store["seed_generator_states"] = np.stack(
                [ops.convert_to_numpy(v.value) for v in states]
            )

    def load_own_variables(self, store):
        keys = list(store.keys())
        if "seed_generator_states" in keys:
            saved = np.asarray(store["seed_generator_states"])
            states = self._seed_states()
            if saved.shape[0] == len(states):
                for variable, value in zip(states, saved):
                    variable.assign(value.astype(variable.dtype))
        # Keras' own loading of this model's own variables (there are none: its layers load
        # theirs), with the seed states left out of the store it checks.
        own = {key: store[key] for key in keys if key != "seed_generator_states"}
        super().load_own_variables(own)

    def ema_variable_pairs(self):
        """(index in non_trainable_variables, index in trainable_variables) per EMA weight."""
        trainable = {id(v): i for i, v in enumerate(self.trainable_variables)}
        non_trainable = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        return [
            (non_trainable[id(ema_weight)], trainable[id(weight)])
            for ema_weight, weight in zip(self.ema_network.weights, self.network.weights)
        ]

    # Sampling.

    def _model_fn(self, network, guided):
        """`model_fn(x_t, t, labels, guidance)` for `samplers.reverse_steps`: the network's output,
        with classifier-free guidance (one batched call on [x; x] with [labels; null])."""

        def model_fn(x_t, timesteps, labels, guidance):
            if labels is None:
                return backend.call_network(network, [x_t, timesteps])
            if not guided:
                return backend.call_network(network, [x_t, timesteps, labels])
            null = ops.full(ops.shape(labels), self.num_classes, dtype="int32")
            both = backend.call_network(
                network,
                [
                    ops.concatenate([x_t, x_t]),
                    ops.concatenate([timesteps, timesteps]),
                    ops.concatenate([labels, null]),
                ],
            )
            conditional, unconditional = ops.split(both, 2)
            return samplers.guided_output(conditional, unconditional, guidance)

        return model_fn

    def _loop_function(self, network, prediction, clip_denoised, guided, whole=True):
        """A compiled `samplers.reverse_steps` over `network`:
        (x, x0, start, stop, chain, labels, guidance) -> (x, x0_hat), `chain` a
        `samplers.ChainTensors`. `whole`: the loop compiled as one program (XLA on TensorFlow);
        otherwise the per-step dispatch of a classic loop (for comparison)."""
        key = (network.name, prediction, clip_denoised, guided, whole)
        if key not in self._compiled_steps:
            model_fn = self._model_fn(network, guided)

            def loop(x, x0, start, stop, chain, labels, guidance):
                return samplers.reverse_steps(
                    model_fn,
                    x,
                    x0,
                    start,
                    stop,
                    chain,
                    context=(labels, guidance),
                    prediction=prediction,
                    clip_denoised=clip_denoised,
                )

            self._compiled_steps[key] = backend.compile_loop(
                loop, network.weights, jit_compile=None if whole else False
            )
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
            raise ValueError(
                f"Expected one class label or {num_images}. Received: {labels.size} labels"
            )
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"Class labels must be in [0, {self.num_classes - 1}]. Received: "
                f"{sorted(set(labels.tolist()))}"
            )
        return labels.astype(np.int32)

    def generate(
        self,
        num_images=None,
        noise=None,
        seed=None,
        class_labels=None,
        guidance=0.0,
        callback=None,
        callback_steps=None,
        start_timestep=None,
        known=None,
        return_uint8=True,
        compile_loop=True,
        **settings,
    ):
        """Samples images by running the reverse process from x_T (or from x_t at `start_timestep`).

        Args:
            num_images: how many images; may be omitted when `noise` is given.
            noise: x_T, shape (N, H, W, C) (x_t with `start_timestep`); drawn from `seed`
                when omitted.
            seed: seed for x_T and the per-step noise; the same seed gives the same images.
            class_labels: one label or one per image (class-conditional models).
            guidance: classifier-free guidance weight w (0: plain conditional sampling).
            callback: called as `callback(step, t, x_t, x0_hat)` after every step (numpy-convertible
                tensors; x_t is the sample after the step), or only after `callback_steps`.
            callback_steps: step indices after which `callback` runs (default: all); the chain is
                compiled between them, so few callback steps cost little.
            start_timestep: begin the chain at this t (`noise` is then x_t, e.g. a noised image).
            known: inpainting by replacement, `(images, mask)`: where the mask (N or 1, H, W, 1 or
                C) is 1, the sample is replaced after every step by the images ([-1, 1]) noised
                to the next timestep.
            return_uint8: uint8 images in [0, 255] (default) or float32 in [-1, 1].
            compile_loop: compile the whole chain as one program (default) or dispatch every step.
            **settings: the `samplers.SamplerSettings` fields: sampler ("ddim", "ddpm" or
                "dpm_solver"; DPM-Solver++(2M) in 20 steps ~ DDIM in 50+), steps (50), eta (DDIM's,
                0: deterministic), skip (the timestep spacing, one of `sampling_options.SKIPS`;
                None: DDIM's "uniform" for ddim, "linspace" for ddpm, "logsnr" for dpm_solver),
                variance (DDPM's sigma_t^2, "fixed_small" = beta-tilde or "fixed_large" = beta),
                clip_denoised (clip x0_hat to [-1, 1] at every step, default True), use_ema
                (sample with the EMA weights, default, or the trained ones).

        Returns:
            A numpy array (N, H, W, C).
        """
        unknown = sorted(set(settings) - set(samplers.SamplerSettings.names()))
        if unknown:
            raise TypeError(
                f"generate() got unexpected keyword arguments {unknown}; its sampler settings "
                f"are {', '.join(samplers.SamplerSettings.names())}."
            )
        settings = samplers.SamplerSettings(**settings)
        plan = settings.plan(self.schedule, start_timestep)
        seed_generator = backend.seed_generator(seed)
        if noise is None:
            if not num_images or num_images < 1:
                raise ValueError(
                    f"num_images must be a positive integer. Received: num_images={num_images}"
                )
            x = keras.random.normal((num_images, *self.image_shape), seed=seed_generator)
        else:
            x = ops.convert_to_tensor(np.asarray(noise, dtype=np.float32))
            if tuple(x.shape[1:]) != self.image_shape or (num_images and x.shape[0] != num_images):
                raise ValueError(
                    f"noise must have shape (N, {', '.join(map(str, self.image_shape))}). "
                    f"Received: {tuple(x.shape)}"
                )
            num_images = x.shape[0]
        labels = self._labels_for(class_labels, num_images)
        guided = labels is not None and guidance != 0
        if labels is not None:
            labels = ops.convert_to_tensor(labels)
        mask = None
        if known is not None:
            shape = (num_images, *self.image_shape)
            known, mask = (
                ops.convert_to_tensor(np.array(np.broadcast_to(np.float32(array), shape)))
                for array in known
            )
            t0 = int(plan.timesteps[0])
            start = keras.random.normal(ops.shape(x), seed=seed_generator)
            noised = (
                self.schedule.sqrt_alphas_cumprod[t0] * known
                + self.schedule.sqrt_one_minus_alphas_cumprod[t0] * start
            )
            x = mask * ops.cast(noised, "float32") + (1.0 - mask) * x
        network = self.ema_network if settings.use_ema else self.network
        loop = self._loop_function(
            network, self.config.diffusion.prediction, settings.clip_denoised, guided, compile_loop
        )
        guidance = ops.convert_to_tensor(guidance, "float32")

        def run(*args):
            return loop(*args, labels, guidance)

        x, _ = samplers.run_plan(
            run,
            x,
            plan,
            seed_generator,
            callback,
            callback_steps,
            known,
            mask,
            max_steps_per_call=None if compile_loop else 1,
        )
        images = ops.convert_to_numpy(x)
        return to_uint8(images) if return_uint8 else images

    def invert(self, images, steps=50, skip="uniform", class_labels=None, use_ema=True):
        """Deterministic DDIM inversion of images in [-1, 1]: the x_T from which DDIM (eta = 0,
        same `steps` and `skip`) reproduces them (`samplers.ddim_inversion_plan`). float32 numpy."""
        plan = samplers.ddim_inversion_plan(self.schedule, steps, skip)
        x = ops.convert_to_tensor(np.asarray(images, dtype=np.float32))
        labels = self._labels_for(class_labels, x.shape[0])
        labels = None if labels is None else ops.convert_to_tensor(labels)
        network = self.ema_network if use_ema else self.network
        loop = self._loop_function(network, self.config.diffusion.prediction, False, False)
        guidance = ops.convert_to_tensor(0.0, "float32")
        x, _ = samplers.run_plan(lambda *args: loop(*args, labels, guidance), x, plan)
        return ops.convert_to_numpy(x)


def to_uint8(images):
    """[-1, 1] floats -> uint8 [0, 255]."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _portable_optimizer_config(config):
    """Points a serialized optimizer at `keras.optimizers` instead of one backend's subclass.

    Under PyTorch Keras records e.g. `keras.src.backend.torch.optimizers.torch_adam.Adam`, which
    imports torch's optimizer code when the checkpoint is loaded on TensorFlow or JAX and fails
    on the first step. The public class resolves to the right subclass on every backend.
    """
    module = config.get("module") or ""
    if module.startswith("keras.src.backend."):
        config = dict(config, module="keras.optimizers")
    return config


def load_model(path):
    """Loads a `.keras` file saved from a `DiffusionModel`, on any backend (safe mode on).

    Raises `FileNotFoundError` when there is no file at `path`, and `ValueError` with one
    sentence when the file is truncated or damaged, or holds some other Keras model.
    """
    # checkpoints imports the callbacks, which import this
    from keras_ddpm.checkpoints import find_damage

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}.")
    damage = find_damage(path)
    if damage:
        raise ValueError(f"{path} is not a complete .keras file: {damage}.")
    token = _WEIGHTS_FROM_FILE.set(True)
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    finally:
        _WEIGHTS_FROM_FILE.reset(token)
    if not isinstance(model, DiffusionModel):
        raise ValueError(
            f"{path} holds a Keras {type(model).__name__}, not a keras_ddpm DiffusionModel; "
            "pass a model written by `python cli.py train` or `export`."
        )
    return model
