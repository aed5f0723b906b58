"""PyTorch EfficientNet weights (lukemelas and timm ports, timm's EfficientNetV2 included) mapped to our layer
names and loaded."""

from __future__ import annotations

import os
import re

import keras
import numpy as np

from efficientnet_tf.errors import UserError
from efficientnet_tf.models.weights.assign import HEAD_LAYER, assign_layers
from efficientnet_tf.models.weights.import_report import ImportReport
from efficientnet_tf.models.weights.torch_files import read_tensors

BOOKKEEPING = "num_batches_tracked"  # batch-norm step counters: no weight of ours

# --- names and layouts -----------------------------------------------------------------------------

_LUKEMELAS_TOP = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv", "_bn1": "top_bn",
                  "_fc": HEAD_LAYER}
_LUKEMELAS_BLOCK = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dwconv", "_bn1": "bn",
                    "_se_reduce": "se_reduce", "_se_expand": "se_expand", "_project_conv": "project_conv",
                    "_bn2": "project_bn"}
_TIMM_TOP = {"conv_stem": "stem_conv", "bn1": "stem_bn", "conv_head": "top_conv", "bn2": "top_bn",
             "classifier": HEAD_LAYER}
_TIMM_BLOCK = {"conv_pw": "expand_conv", "bn1": "expand_bn", "conv_dw": "dwconv", "bn2": "bn",
               "se.conv_reduce": "se_reduce", "se.conv_expand": "se_expand", "conv_pwl": "project_conv",
               "bn3": "project_bn"}
# timm's depthwise-separable blocks (expand ratio 1) name their layers differently.
_TIMM_DS_BLOCK = {"conv_dw": "dwconv", "bn1": "bn", "se.conv_reduce": "se_reduce", "se.conv_expand": "se_expand",
                  "conv_pw": "project_conv", "bn2": "project_bn"}
# timm's EfficientNetV2 blocks: Fused-MBConv is its EdgeResidual ("er": conv_exp, bn1, conv_pwl, bn2), and
# Fused-MBConv without expansion its ConvBnAct ("cn": conv, bn1). Its MBConv is _TIMM_BLOCK.
_TIMM_EDGE_BLOCK = {"conv_exp": "expand_conv", "bn1": "expand_bn", "se.conv_reduce": "se_reduce",
                    "se.conv_expand": "se_expand", "conv_pwl": "project_conv", "bn2": "project_bn"}
_TIMM_CONV_BLOCK = {"conv": "project_conv", "bn1": "project_bn"}


def _detect_naming(names: list[str], origin: str) -> str:
    if not names:
        raise UserError(f"{origin} holds no tensors")
    if any(n.startswith(("_conv_stem.", "_blocks.")) for n in names):
        return "lukemelas"
    if any(n.startswith("conv_stem.") for n in names) and any(n.startswith("blocks.") for n in names):
        return "timm"
    raise UserError(f"{origin}: unrecognised tensor names (first: {names[0]}); expected lukemelas or timm EfficientNet")


def _timm_block_table(scope: str, modules: set[str]) -> dict[str, str]:
    """The timm block naming of the block at `scope` ("blocks.3.1"), told by which modules it has."""
    if f"{scope}.conv_exp" in modules:
        return _TIMM_EDGE_BLOCK
    if f"{scope}.conv_pwl" in modules:
        return _TIMM_BLOCK
    if f"{scope}.conv_dw" in modules:
        return _TIMM_DS_BLOCK
    return _TIMM_CONV_BLOCK


def _layer_name(module: str, naming: str, blocks: list[str], modules: set[str],
                depthwise: str = "dwconv") -> str | None:
    """Our layer name for a torch module path, or None when it has no counterpart. `depthwise` is the
    model's name for a block's depthwise convolution (keras.applications: "dwconv" in V1, "dwconv2" in V2)."""
    if naming == "lukemelas":
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        if not match:
            return _LUKEMELAS_TOP.get(module)
        index, part = int(match.group(1)), match.group(2)
        prefix = blocks[index] if index < len(blocks) else f"<block {index}>_"
        return prefix + _LUKEMELAS_BLOCK[part] if part in _LUKEMELAS_BLOCK else None
    match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)", module)
    if not match:
        return _TIMM_TOP.get(module)
    stage, index, part = int(match.group(1)), int(match.group(2)), match.group(3)
    table = _timm_block_table(f"blocks.{stage}.{index}", modules)
    if part not in table:
        return None
    ours = depthwise if table[part] == "dwconv" else table[part]
    return f"block{stage + 1}{chr(ord('a') + index)}_" + ours


def _keras_weights(layer: keras.layers.Layer, params: dict[str, np.ndarray], module: str) -> tuple[list, list]:
    """Keras weight list of `layer` from a torch module's parameters, and the parameter names used."""
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ["weight", "bias", "running_mean", "running_var"]
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        names = ["weight"] + ["bias"] * bool(layer.use_bias)
    else:
        raise UserError(f"layer {layer.name} ({type(layer).__name__}) cannot take torch weights")
    missing = [n for n in names if n not in params]
    if missing:
        raise UserError(f"torch module {module} lacks {missing[0]} for layer {layer.name}")
    values = [params[n].astype(np.float32) for n in names]
    kernel = values[0]
    if isinstance(layer, keras.layers.DepthwiseConv2D) and kernel.ndim == 4:
        values[0] = kernel.transpose(2, 3, 0, 1)  # [C, 1, kh, kw] -> [kh, kw, C, 1]
    elif isinstance(layer, keras.layers.Conv2D) and kernel.ndim == 4:
        values[0] = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif isinstance(layer, keras.layers.Dense) and kernel.ndim == 2:
        values[0] = kernel.T  # [out, in] -> [in, out]
    elif not isinstance(layer, keras.layers.BatchNormalization):
        raise UserError(f"torch tensor {module}.weight has shape {kernel.shape}, unfit for layer {layer.name}")
    return values, names


# --- import ----------------------------------------------------------------------------------------

def _padding(naming: str, path: str, tf_padding: bool | None) -> tuple[str, list[str]]:
    """The padding the weights were trained with, and a warning when it differs from ours."""
    if naming == "lukemelas":
        return "TensorFlow 'same' (port of a TensorFlow checkpoint; equal to this model's)", []
    if tf_padding is None:
        tf_padding = re.search(r"(?<![a-z0-9])tf_", path.lower()) is not None
    if tf_padding:
        return "TensorFlow 'same' (timm tf_ weights; equal to this model's)", []
    return "symmetric PyTorch padding (timm weights without 'tf_' in the name)", [
        "these timm weights were trained with symmetric padding, which differs from this model's TensorFlow "
        "'same' padding at stride-2 layers: expect lower accuracy until fine-tuned "
        "(pass tf_padding=True if they are in fact tf_ weights)"
    ]


def load_torch_weights(
    model: keras.Model, path: str | os.PathLike, *, strict: bool = True, tf_padding: bool | None = None
) -> ImportReport:
    """Load a lukemelas or timm PyTorch EfficientNet state dict into `model` by layer name.

    The classifier head is skipped (with the reason) when the class count differs. With `strict`,
    tensors other than the head's that have no place in the model are an error. `tf_padding`
    overrides the guess, from the file name, of whether timm weights are tf_ ports.
    """
    path = os.fspath(path)
    tensors = read_tensors(path)
    names = list(tensors)
    if names and all(n.startswith("module.") for n in names):  # saved from DataParallel
        tensors = {n[len("module."):]: v for n, v in tensors.items()}
        names = list(tensors)
    naming = _detect_naming(names, path)
    padding, warnings = _padding(naming, path, tf_padding)
    report = ImportReport(path=path, kind="torch", naming=naming, padding=padding, tensors=len(tensors),
                               values=int(sum(v.size for v in tensors.values())), warnings=warnings)
    # Every block kind ends in a projection batch norm: one per block, in order.
    blocks = [m.group(1) for layer in model.layers if (m := re.fullmatch(r"(block\d+[a-z]+_)project_bn", layer.name))]
    layers = {layer.name: layer for layer in model.layers}
    depthwise = "dwconv2" if any(re.fullmatch(r"block\d+[a-z]+_dwconv2", name) for name in layers) else "dwconv"
    by_module: dict[str, dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        module, _, param = name.rpartition(".")
        if param == BOOKKEEPING:
            report.ignored.append(name)
        else:
            by_module.setdefault(module, {})[param] = value
    modules = set(by_module)
    source: dict[str, list[np.ndarray]] = {}
    tensors_of: dict[str, list[str]] = {}
    target: dict[str, str | None] = {}  # tensor -> our layer it maps to
    for module, params in by_module.items():
        layer_name = _layer_name(module, naming, blocks, modules, depthwise)
        target.update({f"{module}.{p}": layer_name for p in params})
        if layer_name is None or layer_name not in layers:
            why = f"this model has no layer {layer_name}" if layer_name else f"no counterpart for {naming} module"
            report.unused.update({f"{module}.{p}": why for p in params})
            continue
        source[layer_name], used = _keras_weights(layers[layer_name], params, module)
        tensors_of[layer_name] = [f"{module}.{p}" for p in used]
        report.unused.update({f"{module}.{p}": f"layer {layer_name} has no such weight" for p in params
                              if p not in used})
    extra = [n for n in report.unused if target[n] != HEAD_LAYER]
    if strict and extra:
        raise UserError(f"{path}: {len(extra)} tensors have no place in this model (first: {extra[0]}: "
                        f"{report.unused[extra[0]]}); is it the same variant?")
    assigned = assign_layers(model, source, path)
    report.loaded, report.skipped = assigned.loaded, assigned.skipped
    for layer_name, used in tensors_of.items():
        if layer_name in report.loaded:
            report.used += used
        else:
            report.unused.update({n: f"layer {layer_name} was skipped" for n in used})
    return report
