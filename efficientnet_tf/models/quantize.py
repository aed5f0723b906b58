"""Quantisation-aware training (QAT) models: a float EfficientNet rebuilt to compute what its full-integer
TFLite file computes, and the state a training phase changes.

    qat = quantize_model(float_model)           # same layer names, weights copied from the float model
    ...train qat...                             # ranges learn, batch norm folds with batch statistics
    freeze_batch_norm(qat); freeze_ranges(qat)  # the standard recipe, after a while
    export.qat_tflite.convert_qat(qat, ...)     # full-integer .tflite with these ranges

The transform walks the float model's layer graph, so it covers every block made of Conv2D,
DepthwiseConv2D, BatchNormalization, activations, pooling, Add, Multiply, Dropout / DropConnect
and Dense (MBConv, Fused-MBConv, the stems and heads), and says which layer it cannot handle
otherwise. Fake quantisation sits where the integer model requantises:

- the input pixels (0..255, one step each), then the rescaling and normalisation as one affine op;
- each convolution with the batch norm after it folded in (`FoldedBatchNormalization`) and ReLU /
  ReLU6 fused, as the converter fuses them; a convolution with a bias (squeeze-excite) likewise;
- swish as TFLite runs it: LOGISTIC (output fixed at 1/256 steps) and MUL, each requantised;
  sigmoid as LOGISTIC; softmax with its fixed 1/256 output;
- every pooling (MEAN), residual ADD, squeeze-excite MUL and the logits.

Dropout and drop-connect are the identity at inference and requantise nothing. The quantisation
state lives in variables (a tf.train.Checkpoint of the model saves and restores it): each learned
range's min / max and whether it is observed and frozen, and each folded batch norm's
`stats_frozen`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from efficientnet_tf.errors import UserError
from efficientnet_tf.models.fake_quant import (
    DEFAULT_RANGE_MOMENTUM,
    PIXEL_RANGE,
    PROBABILITY_RANGE,
    ActivationQuantizer,
    FoldedBatchNormalization,
    InputAffine,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
)
from efficientnet_tf.models.layers import DropConnect

FUSED_ACTIVATIONS = ("relu", "relu6")  # the converter fuses these into the convolution's output
IDENTITY_LAYERS = (layers.Dropout, DropConnect)  # no op at inference: nothing to requantise
QUANT_SUFFIX = "_quant"
_QUANTIZED_CLASSES = {layers.Conv2D: QuantConv2D, layers.DepthwiseConv2D: QuantDepthwiseConv2D,
                      layers.Dense: QuantDense}


def activation_name(function) -> str:
    """The Keras name of an activation function ("linear" for None)."""
    name = keras.activations.serialize(keras.activations.get(function))
    return "silu" if name == "swish" else str(name)


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _Transform:
    """Rebuilds a functional float model layer by layer with fake quantisation (see the module docstring)."""

    def __init__(self, model: keras.Model, momentum: float):
        self.model = model
        self.momentum = momentum
        self.tensors: dict[int, object] = {}  # id(float tensor) -> its counterpart in the QAT graph
        self.quantizers: dict[int, ActivationQuantizer] = {}  # id(QAT tensor) -> the quantizer that set its scale
        self.done: set[int] = set()  # float layers already rebuilt as part of another one
        self.consumers: dict[int, list] = {}
        outputs = {id(t) for t in _listed(model.output)}
        for layer in model.layers:
            for tensor in _listed(getattr(layer, "input", [])) if not isinstance(layer, layers.InputLayer) else []:
                self.consumers.setdefault(id(tensor), []).append(layer)
        self.model_outputs = outputs

    def sole_consumer(self, tensor, kind):
        """The one layer (of class `kind`) reading `tensor`, unless others read it or it is a model output."""
        readers = self.consumers.get(id(tensor), [])
        if len(readers) == 1 and isinstance(readers[0], kind) and id(tensor) not in self.model_outputs:
            return readers[0]
        return None

    def quant(self, x, name: str, fixed: tuple[float, float] | None = None):
        quantizer = ActivationQuantizer(fixed_range=fixed, momentum=self.momentum, name=name)
        y = quantizer(x)
        self.quantizers[id(y)] = quantizer
        return y

    def input_quantizer(self, x, layer) -> ActivationQuantizer:
        if id(x) not in self.quantizers:
            raise UserError(f"layer {layer.name} reads a tensor that is not quantised; "
                            "quantisation-aware training cannot model this graph")
        return self.quantizers[id(x)]

    def activation(self, x, function, name: str, input_name: str | None = None):
        """An activation as TFLite computes it after x; `input_name` names the requantisation of x before a
        LOGISTIC / MUL / SOFTMAX (None: x is requantised already)."""
        kind = activation_name(function)
        if kind in FUSED_ACTIVATIONS:
            return self.quant(layers.Activation(kind, name=name)(x), name + QUANT_SUFFIX)
        if input_name is not None:
            x = self.quant(x, input_name + QUANT_SUFFIX)
        if kind == "linear":
            return x
        if kind == "silu":
            gate = layers.Activation("sigmoid", name=name + "_sigmoid")(x)
            gate = self.quant(gate, name + "_sigmoid" + QUANT_SUFFIX, fixed=PROBABILITY_RANGE)
            return self.quant(layers.Multiply(name=name)([x, gate]), name + QUANT_SUFFIX)
        if kind in ("sigmoid", "softmax"):
            return self.quant(layers.Activation(kind, name=name)(x), name + QUANT_SUFFIX, fixed=PROBABILITY_RANGE)
        raise UserError(f"quantisation-aware training does not model the activation {kind!r} of layer {name}")

    def run(self) -> keras.Model:
        for layer in self.model.layers:
            if id(layer) not in self.done:
                self.convert(layer)
        inputs = [self.tensors[id(t)] for t in _listed(self.model.input)]
        outputs = [self.tensors[id(t)] for t in _listed(self.model.output)]
        return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                           name=self.model.name + "_qat")

    def convert(self, layer) -> None:
        if isinstance(layer, layers.InputLayer):
            tensor = layer.output
            new = layers.Input(shape=tensor.shape[1:], batch_size=tensor.shape[0], name=layer.name)
            self.tensors[id(tensor)] = new
            if self.sole_consumer(tensor, (layers.Rescaling, layers.Normalization)) is None:
                self.tensors[id(tensor)] = self.quant(new, layer.name + QUANT_SUFFIX)
            return
        x = [self.tensors[id(t)] for t in _listed(layer.input)]
        if isinstance(layer, (layers.Rescaling, layers.Normalization)):
            self.input_affine(layer, x[0])
        elif isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            self.convolution(layer, x[0])
        elif isinstance(layer, layers.Dense):
            self.quantized_layer(layer, x[0])
        elif isinstance(layer, layers.Activation):
            self.tensors[id(layer.output)] = self.activation(x[0], layer.activation, layer.name)
        elif isinstance(layer, IDENTITY_LAYERS):
            y = _rebuilt(layer, type(layer))(x[0])
            self.quantizers[id(y)] = self.input_quantizer(x[0], layer)
            self.tensors[id(layer.output)] = y
        elif isinstance(layer, (layers.GlobalAveragePooling2D, layers.AveragePooling2D, layers.Add,
                                layers.Multiply)):
            y = _rebuilt(layer, type(layer))(x if len(x) > 1 else x[0])
            self.tensors[id(layer.output)] = self.quant(y, layer.name + QUANT_SUFFIX)
        else:
            raise UserError(f"quantisation-aware training does not model layer {layer.name} "
                            f"({type(layer).__name__}); it models Conv2D, DepthwiseConv2D, batch norm, activations, "
                            "average pooling, Add, Multiply, dropout and Dense")

    def input_affine(self, layer, x) -> None:
        """A chain of Rescaling / Normalization layers as one per-channel affine op on quantised pixels."""
        chain = [layer]
        while (following := self.sole_consumer(chain[-1].output, (layers.Rescaling, layers.Normalization))):
            chain.append(following)
        self.done.update(id(item) for item in chain)
        channels = int(layer.input.shape[-1])
        scale, offset = affine_of(chain, channels)
        quantizer = self.quantizers.get(id(x))
        if quantizer is None or quantizer.fixed_range != PIXEL_RANGE:
            x = self.quant(x, layer.name + "_pixels" + QUANT_SUFFIX, fixed=PIXEL_RANGE)
            quantizer = self.quantizers[id(x)]
        affine = InputAffine(scale, offset, name=chain[-1].name)
        affine.set_input_quantizer(quantizer)
        self.tensors[id(chain[-1].output)] = self.quant(affine(x), chain[-1].name + QUANT_SUFFIX)

    def convolution(self, layer, x) -> None:
        """A convolution, with the batch norm after it folded in and a fusable activation after that."""
        quantizer = self.input_quantizer(x, layer)
        bn = self.sole_consumer(layer.output, layers.BatchNormalization)
        if bn is not None and not layer.use_bias and activation_name(layer.activation) == "linear":
            conv = _rebuilt(layer, type(layer))
            folded = _rebuilt(bn, FoldedBatchNormalization)
            folded.set_conv(conv, quantizer)
            y = folded([x, conv(x)])
            self.done.add(id(bn))
            act = self.sole_consumer(bn.output, layers.Activation)
            if act is not None:
                self.done.add(id(act))
                self.tensors[id(act.output)] = self.activation(y, act.activation, act.name, bn.name)
            else:
                self.tensors[id(bn.output)] = self.quant(y, bn.name + QUANT_SUFFIX)
            return
        if bn is not None or type(layer) not in _QUANTIZED_CLASSES:
            raise UserError(f"quantisation-aware training cannot fold layer {layer.name} "
                            f"({type(layer).__name__}{' with a bias or activation' if bn is not None else ''})")
        self.quantized_layer(layer, x)

    def quantized_layer(self, layer, x) -> None:
        """A Conv2D / DepthwiseConv2D / Dense with its bias, then its own activation as separate ops."""
        quantized = _rebuilt(layer, _QUANTIZED_CLASSES[type(layer)], activation=None)
        quantized.set_input_quantizer(self.input_quantizer(x, layer))
        y = quantized(x)
        kind = activation_name(layer.activation)
        self.tensors[id(layer.output)] = self.activation(y, layer.activation, f"{layer.name}_{kind}", layer.name)


def _rebuilt(layer, cls, **overrides):
    """A new layer of class `cls` with `layer`'s config (same name), changed by `overrides`."""
    config = {**layer.get_config(), **overrides}
    return cls.from_config(config)


def affine_of(chain, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) with chain(x) = x·a + b for a chain of Rescaling / Normalization layers."""
    scale, offset = np.ones(channels), np.zeros(channels)
    for layer in chain:
        if isinstance(layer, layers.Rescaling):
            a, b = np.broadcast_to(np.asarray(layer.scale, np.float64), (channels,)), np.broadcast_to(
                np.asarray(layer.offset, np.float64), (channels,))
        else:
            if layer.invert:
                raise UserError(f"quantisation-aware training does not model the inverted normalisation {layer.name}")
            mean = np.broadcast_to(np.asarray(layer.mean, np.float64).reshape(-1), (channels,))
            std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)), keras.backend.epsilon())
            a, b = 1.0 / np.broadcast_to(std, (channels,)), -mean / np.broadcast_to(std, (channels,))
        scale, offset = scale * a, offset * a + b
    return scale.astype(np.float32), offset.astype(np.float32)


def quantize_model(model: keras.Model, *, range_momentum: float = DEFAULT_RANGE_MOMENTUM) -> keras.Model:
    """The QAT model of a float functional model: same layer names, the float model's weights copied in.

    `range_momentum` is the moving-average momentum of the learned activation ranges.
    """
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        raise UserError("quantisation-aware training runs in float32; unset the mixed-precision policy")
    qat = _Transform(model, float(range_momentum)).run()
    load_float_weights(qat, model)
    return qat


def load_float_weights(qat: keras.Model, model: keras.Model) -> list[str]:
    """Copy a float model's weights into its QAT model by layer name; returns the layers copied.

    Folded batch norms take gamma, beta and the moving statistics; the input affine op is recomputed
    from the float model's rescaling and normalisation.
    """
    copied = []
    for layer in model.layers:
        if not layer.weights or isinstance(layer, (layers.Normalization, layers.Rescaling)):
            continue
        target = qat.get_layer(layer.name)
        values = layer.get_weights()
        current = target.get_weights()
        if [v.shape for v in values] != [v.shape for v in current[: len(values)]]:
            raise UserError(f"layer {layer.name} of {model.name} does not fit its QAT model; quantise the same model")
        target.set_weights(values + current[len(values):])
        copied.append(layer.name)
    producers = {id(layer.output): layer for layer in model.layers}
    for target in qat.layers:
        if isinstance(target, InputAffine):
            chain, layer = [], model.get_layer(target.name)
            while isinstance(layer, (layers.Rescaling, layers.Normalization)):
                chain.insert(0, layer)
                layer = producers.get(id(_listed(layer.input)[0]))
            scale, offset = affine_of(chain, int(target.scale.shape[0]))
            target.scale.assign(scale)
            target.offset.assign(offset)
            copied.append(target.name)
    return copied


def quantizers(model: keras.Model) -> list[ActivationQuantizer]:
    """The model's quantizers with learned ranges."""
    return [layer for layer in model.layers if isinstance(layer, ActivationQuantizer) and layer.learned]


def folded_batch_norms(model: keras.Model) -> list[FoldedBatchNormalization]:
    """The model's batch norms folded into convolutions."""
    return [layer for layer in model.layers if isinstance(layer, FoldedBatchNormalization)]


def is_quantized(model: keras.Model) -> bool:
    """Whether `model` is a QAT model (has fake-quantised activations)."""
    return any(isinstance(layer, ActivationQuantizer) for layer in model.layers)


def range_variables(model: keras.Model) -> list:
    """The learned ranges' min / max variables (to average across replicas, as batch-norm statistics are)."""
    return [v for q in quantizers(model) for v in (q.minimum, q.maximum)]


def freeze_batch_norm(model: keras.Model) -> int:
    """From now on, fold batch norm with its moving statistics and stop updating them; returns the count."""
    for layer in folded_batch_norms(model):
        layer.stats_frozen.assign(1.0)
    return len(folded_batch_norms(model))


def freeze_ranges(model: keras.Model) -> int:
    """Stop updating the learned activation ranges; returns how many there are."""
    for layer in quantizers(model):
        layer.frozen.assign(1.0)
    return len(quantizers(model))


def quantization_state(model: keras.Model) -> dict:
    """What the QAT state is now: counts of ranges, observed / frozen ones, and frozen batch norms."""
    points, norms = quantizers(model), folded_batch_norms(model)
    flag = lambda variable: bool(float(np.asarray(variable)) > 0.5)  # noqa: E731
    return {
        "ranges": len(points),
        "ranges_observed": sum(flag(q.observed) for q in points),
        "ranges_frozen": sum(flag(q.frozen) for q in points),
        "batch_norms": len(norms),
        "batch_norms_frozen": sum(flag(layer.stats_frozen) for layer in norms),
    }


def unobserved_ranges(model: keras.Model) -> list[str]:
    """Names of the quantizers whose range no training step has set (an export would guess them)."""
    return [q.name for q in quantizers(model) if float(np.asarray(q.observed)) < 0.5]
