"""Input pipelines for EfficientNet: dataset sources, Inception preprocessing, AutoAugment / RandAugment.

    import data
    src = data.get_source("imagenette_mini")          # or imagenet, tfds:<name>[:<config>], folder:<path>
    train = data.build_train_dataset(src, image_size=224, batch_size=32)
    evaluation = data.build_eval_dataset(src, image_size=224, batch_size=32)

This package knows nothing of the model; it depends only on TensorFlow, absl and
`efficientnet_tf.errors`. TensorFlow Datasets is imported only when a `tfds:` source is used.
"""

from . import augment, mixing, preprocessing
from .pipeline import AUGMENTATIONS, build_eval_dataset, build_train_dataset, sample_images
from .sources import DEFAULT_DATASET, Source, get_source

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_DATASET",
    "Source",
    "augment",
    "build_eval_dataset",
    "build_train_dataset",
    "get_source",
    "mixing",
    "preprocessing",
    "sample_images",
]
