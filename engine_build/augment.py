"""Augmentation that prepares MNIST digits for camera crops.

Works on uint8 images [N,28,28] (ink bright on dark) before the shared
normalisation of ``daemon.preprocess``: small rotation, shift and scale, stroke
thickness (dilate/erode), blur and sensor noise.
"""

import cv2
import numpy as np

from daemon.preprocess import INPUT_SIZE


class AugmentParams(object):
    """Ranges of the random transforms; probabilities are per image."""

    def __init__(
        self,
        max_rotation_deg=12.0,
        max_shift_px=2.5,
        scale_range=(0.85, 1.1),
        max_shear=0.15,
        thickness_probability=0.3,
        blur_probability=0.2,
        noise_probability=0.2,
        max_noise_std=20.0,
    ):
        self.max_rotation_deg = max_rotation_deg
        self.max_shift_px = max_shift_px
        self.scale_range = scale_range
        self.max_shear = max_shear
        self.thickness_probability = thickness_probability
        self.blur_probability = blur_probability
        self.noise_probability = noise_probability
        self.max_noise_std = max_noise_std


_KERNEL = np.ones((2, 2), np.uint8)


def augment_batch(images, rng, params=None):
    """Return a randomly transformed copy of ``images`` (uint8 [N,28,28])."""
    params = params or AugmentParams()
    count = len(images)
    out = np.empty_like(images)
    angles = np.deg2rad(rng.uniform(-params.max_rotation_deg, params.max_rotation_deg, count))
    scales = rng.uniform(params.scale_range[0], params.scale_range[1], count)
    shears = rng.uniform(-params.max_shear, params.max_shear, count)
    shifts = rng.uniform(-params.max_shift_px, params.max_shift_px, (count, 2))
    thickness = rng.random(count)
    blur = rng.random(count) < params.blur_probability
    centre = (INPUT_SIZE - 1) / 2.0
    for i in range(count):
        cos, sin = np.cos(angles[i]) * scales[i], np.sin(angles[i]) * scales[i]
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shears[i]], [0.0, 1.0]])
        offset = np.array([centre, centre]) - linear @ np.array([centre, centre]) + shifts[i]
        matrix = np.hstack([linear, offset[:, None]]).astype(np.float32)
        image = cv2.warpAffine(images[i], matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR)
        if thickness[i] < params.thickness_probability / 2:
            image = cv2.dilate(image, _KERNEL)
        elif thickness[i] < params.thickness_probability:
            image = cv2.erode(image, _KERNEL)
        if blur[i]:
            image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.3, 1.0))
        out[i] = image
    noisy = rng.random(count) < params.noise_probability
    if noisy.any():
        stds = rng.uniform(0, params.max_noise_std, noisy.sum())[:, None, None]
        noise = rng.standard_normal((noisy.sum(), INPUT_SIZE, INPUT_SIZE)) * stds
        out[noisy] = np.clip(out[noisy].astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return out
