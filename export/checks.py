"""Checks of what an export is given: class names, the model's input and output, the image size, the resize."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from efficientnet_tf.data import preprocessing

from efficientnet_tf.errors import UserError

INT8_IO_TYPES = ("uint8", "int8")  # the first is the default: what cameras and MediaPipe feed


def check_resize_method(resize_method: str) -> str:
    """Validate a resize method name against the data package's list."""
    try:
        return preprocessing.check_resize_method(resize_method)
    except ValueError as error:
        raise UserError(str(error)) from None


def check_class_names(class_names: Sequence[str], num_classes: int | None = None) -> list[str]:
    """Validate class names (one line each) and, when given, their count against the model's."""
    names = [str(n) for n in class_names]
    if not names:
        raise UserError("class_names is empty; pass the dataset's class names so predictions can be named")
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if bad:
        raise UserError(f"class name {bad[0]!r} is empty or spans lines; class names must be single non-empty lines")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(
            f"the model predicts {num_classes} classes but {len(names)} class names were given; "
            "export with the config and dataset the checkpoint was trained with"
        )
    return names


def model_image_size(model: keras.Model) -> int | None:
    """Square input resolution fixed by the model, or None when its spatial size is dynamic."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise UserError(f"model {model.name} has {len(shape)} inputs; an image classifier with one input is expected")
    if len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"model {model.name} takes inputs of shape {shape}; expected [batch, height, width, 3] images")
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return None
    if height != width:
        raise UserError(f"model {model.name} takes {height}x{width} images; only square inputs are supported")
    return int(height)


def model_num_classes(model: keras.Model) -> int:
    """Number of classes of a classifier's [batch, classes] output."""
    shape = model.output_shape
    if isinstance(shape, (list, dict)) or len(shape) != 2 or shape[-1] is None:
        raise UserError(
            f"model {model.name} outputs {shape}; a classifier with one [batch, classes] output is expected"
        )
    return int(shape[-1])


def check_image_size(model: keras.Model, image_size: int) -> int:
    """Validate `image_size` against the model's fixed input resolution."""
    size = int(image_size)
    if size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    fixed = model_image_size(model)
    if fixed is not None and fixed != size:
        raise UserError(
            f"image_size={size} but the model takes {fixed}x{fixed} images; use the resolution it was built with"
        )
    return size


def default_class_names(num_classes: int) -> list[str]:
    """Placeholder names when an artifact carries none."""
    return [f"class_{i}" for i in range(num_classes)]
