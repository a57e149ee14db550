"""keras_ddpm: denoising diffusion models (DDPM, DDIM) in Keras 3, on TensorFlow, PyTorch and JAX."""

from keras_ddpm.config import PRESETS
from keras_ddpm.config import DiffusionConfig
from keras_ddpm.config import Preset
from keras_ddpm.config import TrainConfig
from keras_ddpm.config import UNetConfig
from keras_ddpm.config import get_preset
from keras_ddpm.diffusion_model import DiffusionModel
from keras_ddpm.diffusion_model import load_model
from keras_ddpm.optimizers import make_optimizer
from keras_ddpm.schedules import NoiseSchedule
from keras_ddpm.unet import build_unet

__version__ = "0.1.0"
