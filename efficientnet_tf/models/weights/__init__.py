"""Weight import: published weights as data (`published`), the cache and mirror (`fetch`), readers for
Keras files (`keras_files`), reference TF1 checkpoints (`reference`) and PyTorch state dicts
(`torch_files`, `torch_names`), assignment by layer name (`assign`), and one entry (`load`) that returns
one `ImportReport` (`report`). These modules import the model library's low rooms (scaling,
normalisation) and nothing above them; the builder imports this package, never the reverse.
"""

from efficientnet_tf.models.weights.assign import HEAD_LAYER
from efficientnet_tf.models.weights.fetch import fetch_weights
from efficientnet_tf.models.weights.load import import_weights, load_named, load_pretrained
from efficientnet_tf.models.weights.published import is_weights_name, names_for, normalization_for
from efficientnet_tf.models.weights.report import ImportReport
from efficientnet_tf.models.weights.torch_names import load_torch_weights

__all__ = ["HEAD_LAYER", "ImportReport", "fetch_weights", "import_weights", "is_weights_name", "load_named",
           "load_pretrained", "load_torch_weights", "names_for", "normalization_for"]
