"""Training settings that differ per variant: the configuration's per-variant layer.

Architecture facts (width, depth, resolution, dropout) are the model library's
(`efficientnet_tf.models.scaling`); what a variant is *trained* with lives here. RandAugment magnitudes
for the larger models follow the RandAugment paper's recommendation (used when data.augment is
randaugment). Variants without an entry train with hparams/defaults.yaml as it is.

EfficientNetV2 variants train with the V2 recipe: progressive learning in 4 equal stages (paper, section 4;
hparams/resolve.py), the image size rising from 128 px to the variant's last training
size and the regularisation rising with it; evaluation at the variant's evaluation size (model.image_size).
  - S, M, L: the paper's Table 6 (min -> max): image size 128 -> 300 / 380 / 380, RandAugment magnitude
    5 -> 15 / 20 / 25, mixup alpha 0 -> 0 / 0.2 / 0.4, dropout 0.1 -> 0.3 / 0.4 / 0.5. The reference code
    (google/automl efficientnetv2) ends lower: RandAugment 10 / 15 / 20, mixup and cutmix 0 / 0.2 / 0.5, a
    constant dropout of 0.2 / 0.3 / 0.4 (its dropout ramp is commented out) and last sizes 300 / 384 / 384.
  - B0-B3 and XL, for which the paper has no such table: the reference's settings. B0-B3: V1's AutoAugment
    (the reference's "effnetv1_autoaug"), no mixup, constant dropout, 128 px -> 192 / 192 / 208 / 240;
    XL: RandAugment 5 -> 20, mixup and cutmix 0 -> 0.5, constant dropout 0.4, 128 -> 384 px.
  - Optimizer and schedule: the reference's (google/automl efficientnetv2/hparams.py and datasets.py
    ImageNet): RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3), 0.016 per 256 images with 5 warm-up epochs,
    x0.97 every 2.4 epochs, 350 epochs, label smoothing 0.1, weight decay 1e-5, EMA 0.9999, drop-connect 0.2
    -- the defaults -- at the reference's batch of 4096. Batch-norm momentum 0.9 comes with the model.
A dataset layer may replace all this with a short recipe (hparams/imagenette.yaml turns progressive
learning off: a few hundred steps cannot use it).
"""

from __future__ import annotations

from typing import Any

from efficientnet_tf.models.scaling import canonical_name, get_variant

V2_STAGES = 4
V2_FIRST_SIZE = 128
V2_BATCH_SIZE = 4096


def _v2_recipe(name: str, *, augment: str = "autoaugment", randaug: float | None = None, mixup: float = 0.0,
               cutmix: float = 0.0, dropout: tuple[float, float] | None = None,
               last_size: int | None = None) -> dict[str, dict[str, Any]]:
    """The V2 training layer of `name`: progressive stages from 128 px to `last_size` (default: the reference's
    training size of the variant); `dropout` (first, last) rises with them (None: the model's dropout
    throughout), as do RandAugment (from 5) and mixup / cutmix (from 0)."""
    data: dict[str, Any] = {"augment": augment, "mixup_alpha": mixup, "cutmix_alpha": cutmix}
    if randaug is not None:
        data["randaug_magnitude"] = randaug
    progressive: dict[str, Any] = {"stages": V2_STAGES, "image_size_start": V2_FIRST_SIZE,
                                   "image_size_end": last_size or get_variant(name).train_resolution,
                                   "randaug_magnitude_start": 5.0,
                                   "mixup_alpha_start": 0.0, "cutmix_alpha_start": 0.0}
    layer: dict[str, dict[str, Any]] = {"data": data, "train": {"batch_size": V2_BATCH_SIZE,
                                                                 "progressive": progressive}}
    if dropout is not None:
        progressive["dropout_rate_start"] = dropout[0]
        layer["model"] = {"dropout_rate": dropout[1]}
    return layer


VARIANT_TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "efficientnet-b5": {"data": {"randaug_magnitude": 17}},
    "efficientnet-b7": {"data": {"randaug_magnitude": 28}},
    **{f"efficientnetv2-b{i}": _v2_recipe(f"efficientnetv2-b{i}") for i in range(4)},
    "efficientnetv2-s": _v2_recipe("efficientnetv2-s", augment="randaugment", randaug=15, dropout=(0.1, 0.3)),
    "efficientnetv2-m": _v2_recipe("efficientnetv2-m", augment="randaugment", randaug=20, mixup=0.2,
                                   dropout=(0.1, 0.4), last_size=380),
    "efficientnetv2-l": _v2_recipe("efficientnetv2-l", augment="randaugment", randaug=25, mixup=0.4,
                                   dropout=(0.1, 0.5), last_size=380),
    "efficientnetv2-xl": _v2_recipe("efficientnetv2-xl", augment="randaugment", randaug=20, mixup=0.5, cutmix=0.5),
}


def variant_layer(model_name: str) -> dict[str, dict[str, Any]]:
    """The per-variant training overrides of a model name (any accepted spelling); {} when there are none."""
    layer = VARIANT_TRAINING.get(canonical_name(model_name), {})
    return {section: {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
            for section, values in layer.items()}
