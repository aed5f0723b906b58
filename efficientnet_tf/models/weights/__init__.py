"""Weight import: published weights as data (`published`), the cache and mirror (`fetch`), readers for
Keras files (`keras_files`), reference TF1 checkpoints (`reference`) and PyTorch state dicts
(`torch_files`, `torch_names`), assignment by layer name (`assign`), and one entry (`load`) that returns
one `ImportReport` (`report`). These modules import the model library's low rooms (scaling,
normalisation) and nothing above them; the builder imports this package, never the reverse.

The names below load on first use, so `efficientnet_tf.models.weights.published` (the table, pure Python)
is read by the configuration without starting TensorFlow.
"""

from __future__ import annotations

from efficientnet_tf.lazy import lazy_names

LAZY_NAMES = {
    "HEAD_LAYER": "efficientnet_tf.models.weights.assign",
    "ImportReport": "efficientnet_tf.models.weights.import_report",
    "fetch_weights": "efficientnet_tf.models.weights.fetch",
    "import_weights": "efficientnet_tf.models.weights.load",
    "is_weights_name": "efficientnet_tf.models.weights.published",
    "load_named": "efficientnet_tf.models.weights.load",
    "load_pretrained": "efficientnet_tf.models.weights.load",
    "load_torch_weights": "efficientnet_tf.models.weights.torch_names",
    "names_for": "efficientnet_tf.models.weights.published",
    "normalization_for": "efficientnet_tf.models.weights.published",
}

__all__ = sorted(LAZY_NAMES)

__getattr__, __dir__ = lazy_names(globals(), LAZY_NAMES)
