"""Input pipelines for EfficientNet: dataset sources, Inception preprocessing, AutoAugment / RandAugment.

    from efficientnet_tf import data
    src = data.get_source("imagenette_mini", None, holdout_fraction=0.1, seed=0)
    train = data.build_train_dataset(src, image_size=224, batch_size=32, ...)   # settings from the config
    evaluation = data.build_eval_dataset(src, image_size=224, batch_size=32, resize_method="bicubic")

This package knows nothing of the model; it depends only on TensorFlow, absl and
`efficientnet_tf.errors`. TensorFlow Datasets is imported only when a `tfds:` source is used.
In the repository it lives in `data/`, installed as `efficientnet_tf.data`.
"""

from efficientnet_tf.data import augment, augment_device, augment_keras_cv, mixing, preprocessing
from efficientnet_tf.data.pipeline import AUGMENTATIONS, build_eval_dataset, build_train_dataset, sample_images
from efficientnet_tf.data.sources import DEFAULT_DATASET, Source, SyntheticSource, get_source, synthetic_dataset_fn

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_DATASET",
    "Source",
    "SyntheticSource",
    "augment",
    "augment_device",
    "augment_keras_cv",
    "build_eval_dataset",
    "build_train_dataset",
    "get_source",
    "mixing",
    "preprocessing",
    "sample_images",
    "synthetic_dataset_fn",
]
