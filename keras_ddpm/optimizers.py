"""The papers' optimiser: Adam(W), linear learning-rate warm-up then constant or cosine, global-norm
clipping."""

import keras
from keras import ops

from keras_ddpm.backend import internals


@keras.saving.register_keras_serializable(package="keras_ddpm")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """lr * min(1, (step + 1) / warmup_steps): DDPM's warm-up, then constant.

    Keras has no warm-up-then-constant schedule (`CosineDecay(alpha=1.0, warmup_target=lr)`
    comes close but gives lr 0 at step 0, wasting the first step).
    """

    def __init__(self, learning_rate, warmup_steps):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        if not self.warmup_steps:
            return ops.convert_to_tensor(self.learning_rate, "float32")
        fraction = ops.minimum(1.0, (ops.cast(step, "float32") + 1.0) / self.warmup_steps)
        return self.learning_rate * fraction

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def make_learning_rate(train_config):
    """The learning rate as a function of the optimizer step (0-based), from `train_config`.

    constant: `LinearWarmup` (DDPM). cosine: Keras' `CosineDecay` with linear warm-up from 0
    to the peak over `warmup_steps`, then half a cosine down to 0 at `train_steps`
    (improved-diffusion / diffusers' "cosine").
    """
    if train_config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(1, train_config.train_steps - train_config.warmup_steps),
            alpha=0.0,
            warmup_target=train_config.learning_rate,
            warmup_steps=train_config.warmup_steps,
        )
    return LinearWarmup(train_config.learning_rate, train_config.warmup_steps)


def make_optimizer(train_config):
    """Adam or AdamW (eps 1e-8, as TF1's default the paper used) with the schedule and clipping of
    `train_config`.

    Under a "mixed_float16" dtype policy, `DiffusionModel.compile` wraps it in Keras'
    `LossScaleOptimizer` (dynamic loss scaling); bfloat16 needs none.
    """
    common = {
        "learning_rate": make_learning_rate(train_config),
        "epsilon": 1e-8,
        "global_clipnorm": train_config.grad_clip or None,
    }
    if train_config.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=train_config.weight_decay, **common)
    return keras.optimizers.Adam(**common)


def learning_rate_at(optimizer, step):
    """The learning rate the optimizer uses for update number `step` (0-based), as a float."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    # The schedule itself: `optimizer.learning_rate` evaluates it at the optimizer's own step.
    learning_rate = internals.learning_rate_schedule(optimizer)
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        learning_rate = learning_rate(step)
    return float(ops.convert_to_numpy(learning_rate))
