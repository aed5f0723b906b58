"""Training settings that differ per variant: the configuration's per-variant layer.

Architecture facts (width, depth, resolution, dropout) are the model library's
(`efficientnet_tf.models.scaling`); what a variant is *trained* with lives here. RandAugment magnitudes
for the larger models follow the RandAugment paper's recommendation (used when data.augment is
randaugment). Variants without an entry train with hparams/defaults.yaml as it is.
"""

from __future__ import annotations

from typing import Any

from efficientnet_tf.models.scaling import canonical_name

VARIANT_TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "efficientnet-b5": {"data": {"randaug_magnitude": 17}},
    "efficientnet-b7": {"data": {"randaug_magnitude": 28}},
}


def variant_layer(model_name: str) -> dict[str, dict[str, Any]]:
    """The per-variant training overrides of a model name (any accepted spelling); {} when there are none."""
    layer = VARIANT_TRAINING.get(canonical_name(model_name), {})
    return {section: dict(values) for section, values in layer.items()}
