"""Image preprocessing as real vision encoders expect it: resize, centre-crop, rescale, normalise.

Mirrors the HF image processors' order of operations (CLIP: resize shortest side with bicubic
resampling, centre crop, x/255, (x - mean)/std), so synthetic and real data take one path.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

NORMALIZATION = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # x/255 only, for towers trained from scratch on mostly-black synthetic images: black stays exactly 0,
    # so the bias-free patch embedding of an empty patch is 0 and its token is its position embedding.
    # (With CLIP statistics every empty patch embeds to one shared vector ~50x the position signal.)
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # x/255 minus the image's own per-channel median (std 1): the background, the colour most pixels have,
    # becomes 0 whatever it is (black, white, a grey texture), so what "unit" gives black backgrounds (empty
    # patches embed to ~0, their tokens carry position) holds for any background.
    "background": None,
}
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclasses.dataclass(frozen=True)
class ImagePreprocessor:
    """uint8 RGB -> the encoder's float input, as the HF image processor of its family computes it.

    ``crop=True`` (CLIP, DINOv2): resize the shortest side to ``resize`` (0 = ``size``; DINOv2 uses
    256 for 224) and centre-crop ``size``; ``crop=False`` (SigLIP): resize to ``size`` x ``size``.
    Tested equal to transformers' ``CLIPImageProcessorPil``, ``SiglipImageProcessorPil`` and
    ``BitImageProcessorPil`` (DINOv2) in tests/test_pipeline.py.
    """

    size: int
    normalization: str = "clip"
    resample: str = "bicubic"
    crop: bool = True
    resize: int = 0

    def __post_init__(self):
        if self.normalization not in NORMALIZATION:
            raise ValueError(f"Unknown normalization {self.normalization!r}; expected one of {sorted(NORMALIZATION)}.")
        if self.resample not in RESAMPLE:
            raise ValueError(f"Unknown resample {self.resample!r}; expected one of {sorted(RESAMPLE)}.")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` -> float32 ``[size, size, 3]``, normalised."""
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}.")
        h, w, _ = image.shape
        if not self.crop:
            if (h, w) != (self.size, self.size):
                image = np.asarray(Image.fromarray(image).resize((self.size, self.size), RESAMPLE[self.resample]))
        elif (h, w) != (self.size, self.size) or self.resize not in (0, self.size):
            target = self.resize or self.size
            # the long side truncated, as HF's get_resize_output_image_size does (int, not round)
            short, long = min(h, w), max(h, w)
            new_long = int(target * long / short)
            new_h, new_w = (target, new_long) if h <= w else (new_long, target)
            pil = Image.fromarray(image).resize((new_w, new_h), RESAMPLE[self.resample])
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            image = np.asarray(pil)[top : top + self.size, left : left + self.size]
        pixels = image.astype(np.float32) / 255.0
        if NORMALIZATION[self.normalization] is None:  # "background"
            return pixels - np.median(pixels.reshape(-1, pixels.shape[-1]), axis=0)
        mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[self.normalization])
        return (pixels - mean) / std
