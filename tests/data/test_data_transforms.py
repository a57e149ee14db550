"""keras_ddpm.data.transforms: crop geometry, checked on images whose pixels give their position."""

import numpy as np
import pytest
from data_testing import CELEBA_LEFT
from data_testing import CELEBA_TOP
from data_testing import batches
from data_testing import ramp_image
from data_testing import to_pixels
from PIL import Image

from keras_ddpm import data
from keras_ddpm.data import transforms

pytest.importorskip("tensorflow_datasets")
tf = data.import_tensorflow()


def test_crop_windows():
    def window(height, width, crop):
        return tuple(int(v) for v in transforms.crop_window(height, width, crop))

    assert window(218, 178, "celeba") == (57, 25, 128, 128)  # centred at (x=89, y=121)
    assert window(436, 356, "celeba") == (114, 50, 256, 256)  # the same window, scaled
    assert window(218, 178, "center") == (20, 0, 178, 178)
    assert window(30, 50, "center") == (0, 10, 30, 30)
    assert window(30, 50, "none") == (0, 0, 30, 50)


def test_celeba_crop_takes_exactly_ddims_window(tmp_path):
    Image.fromarray(ramp_image()).save(tmp_path / "face.png")
    kwargs = dict(shuffle=False, repeat=False, drop_remainder=False, crop="celeba")
    full = to_pixels(batches(data.make_dataset(str(tmp_path), 128, 3, 1, **kwargs))[0][0])
    rows, cols = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    np.testing.assert_allclose(full[..., 0], CELEBA_TOP + rows, atol=1e-4)
    np.testing.assert_allclose(full[..., 1], CELEBA_LEFT + cols, atol=1e-4)
    # At 64x64 each output pixel averages a 2x2 block symmetrically: the ramp gives its centre.
    small = to_pixels(batches(data.make_dataset(str(tmp_path), 64, 3, 1, **kwargs))[0][0])
    inner = np.arange(1, 63)
    np.testing.assert_allclose(small[inner, 10, 0], CELEBA_TOP + 0.5 + 2 * inner, atol=0.51)
    np.testing.assert_allclose(small[10, inner, 1], CELEBA_LEFT + 0.5 + 2 * inner, atol=0.51)
