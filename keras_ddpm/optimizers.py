"""The papers' optimiser: Adam, linear learning-rate warm-up, global-norm gradient clipping."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ddpm")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """lr * min(1, (step + 1) / warmup_steps): DDPM's warm-up, then constant."""

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


def make_optimizer(train_config):
    """Adam (eps 1e-8, as TF1's default the paper used) with warm-up and clipping from `train_config`."""
    return keras.optimizers.Adam(
        learning_rate=LinearWarmup(train_config.learning_rate, train_config.warmup_steps),
        epsilon=1e-8,
        global_clipnorm=train_config.grad_clip or None,
    )
