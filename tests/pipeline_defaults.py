"""Pipeline calls with the configuration's defaults filled in (the library itself takes explicit values)."""

from __future__ import annotations

from typing import Any

from efficientnet_tf import data, hparams

_DATA = hparams.default_config().data
DEFAULT_RESIZE = "bicubic"  # EfficientNet-B0's (the variant table's resize for non-lite models)


def get_source(spec: str = "imagenette_mini", data_dir: str | None = None, **kwargs: Any) -> data.Source:
    """data.get_source with holdout_fraction and seed from hparams/defaults.yaml unless given."""
    kwargs.setdefault("holdout_fraction", float(_DATA.holdout_fraction))
    kwargs.setdefault("seed", int(_DATA.split_seed))
    return data.get_source(spec, data_dir, **kwargs)


def train_dataset(src: data.Source, **kwargs: Any) -> Any:
    """data.build_train_dataset with every augmentation setting from hparams/defaults.yaml unless given."""
    for key in ("augment", "randaug_num_layers", "randaug_magnitude", "mixup_alpha", "cutmix_alpha", "min_crop_area"):
        kwargs.setdefault(key, _DATA[key])
    kwargs.setdefault("resize_method", DEFAULT_RESIZE)
    kwargs.setdefault("seed", None)
    return data.build_train_dataset(src, **kwargs)


def eval_dataset(src: data.Source, **kwargs: Any) -> Any:
    """data.build_eval_dataset with B0's resize method unless given."""
    kwargs.setdefault("resize_method", DEFAULT_RESIZE)
    return data.build_eval_dataset(src, **kwargs)
