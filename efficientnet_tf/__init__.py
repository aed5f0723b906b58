"""EfficientNet for TensorFlow / Keras 3: compound-scaled models, training, data pipelines and export.

    import efficientnet_tf as et
    model = et.build_model("efficientnet-b3", weights=None, classes=1000)

Subpackages: `efficientnet_tf.models` (the network, its counting and weight import),
`efficientnet_tf.hparams` (configuration), `efficientnet_tf.data` (input pipelines),
`efficientnet_tf.training` (the distributed training loop), `efficientnet_tf.export` (SavedModel, TFLite,
ONNX, ...: one module per format), `efficientnet_tf.prediction` (classifying files with a run or any
exported file), `efficientnet_tf.app` (train / evaluate / export / predict from a config) and
`efficientnet_tf.cli` (the command line). The model API below is loaded on first use, so that the
command line can check its flags before TensorFlow starts.
"""

from __future__ import annotations

from efficientnet_tf import models
from efficientnet_tf.lazy import lazy_names
from efficientnet_tf.version import __version__  # noqa: F401

_LAZY = {**models.LAZY_NAMES, "UserError": "efficientnet_tf.errors"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
