"""torch.save emulated without torch, for the weight-import tests: state dicts written in torch's legacy and zip
.pth formats, with tensors stored as torch stores them (strided, at offsets)."""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import struct
import zipfile

import keras
import numpy as np


def _torch_global(module: str, name: str) -> type:
    """A class that the pickler below writes as GLOBAL `module name`."""
    return type(name, (), {"torch_global": (module, name)})


REBUILD_TENSOR = _torch_global("torch._utils", "_rebuild_tensor_v2")
STORAGE_TYPES = {np.dtype("float32"): _torch_global("torch", "FloatStorage"),
                 np.dtype("float16"): _torch_global("torch", "HalfStorage"),
                 np.dtype("int64"): _torch_global("torch", "LongStorage")}


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.args = (storage, offset, shape, stride)

    def __reduce_ex__(self, protocol):
        return REBUILD_TENSOR, (*self.args, False, collections.OrderedDict())


class _TorchPickler(pickle._Pickler):
    """Pure-Python pickler writing storages as persistent ids and stand-ins as torch globals."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy, self.storages = legacy, {}

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        self.storages[obj.key] = obj
        pid = ("storage", STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.data.size)
        return pid + (None,) if self.legacy else pid

    def save_global(self, obj, name=None):
        if isinstance(obj, type) and hasattr(obj, "torch_global"):
            self.write(pickle.GLOBAL + "{}\n{}\n".format(*obj.torch_global).encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def tensor_records(tensors: dict[str, np.ndarray]) -> collections.OrderedDict:
    """Tensors as torch would store them; 4-D ones channels-last (strided), 1-D ones at an offset."""
    out = collections.OrderedDict()
    for i, (name, value) in enumerate(tensors.items()):
        key = str(1000 + i)
        if value.ndim == 4:
            o, c, h, w = value.shape
            out[name] = _Tensor(_Storage(key, value.transpose(0, 2, 3, 1)), 0, value.shape, (h * w * c, 1, w * c, c))
        elif value.ndim == 1:
            padded = np.concatenate([np.full(3, -7, value.dtype), value, np.full(2, 9, value.dtype)])
            out[name] = _Tensor(_Storage(key, padded), 3, value.shape, (1,))
        else:
            strides = tuple(int(np.prod(value.shape[j + 1:])) for j in range(value.ndim))
            out[name] = _Tensor(_Storage(key, value), 0, value.shape, strides)
    return out


def write_pth(path: pathlib.Path, obj, legacy: bool) -> None:
    """Write `obj` (tensor records inside) in torch's legacy or zip .pth format."""
    buf = io.BytesIO()
    pickler = _TorchPickler(buf, legacy)
    pickler.dump(obj)
    storages = pickler.storages
    if legacy:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
                pickle.dump(header, f, protocol=2)
            f.write(buf.getvalue())
            pickle.dump(sorted(storages), f, protocol=2)
            for key in sorted(storages):
                f.write(struct.pack("<q", storages[key].data.size) + storages[key].data.tobytes())
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buf.getvalue())
            z.writestr("archive/byteorder", "little")
            for key, storage in storages.items():
                z.writestr(f"archive/data/{key}", storage.data.tobytes())


def torch_params(layer: keras.layers.Layer, batches_tracked: int = 5) -> dict[str, np.ndarray]:
    """A Keras layer's weights as its PyTorch module's parameters: OIHW conv kernels, [C, 1, k, k] depthwise ones,
    [out, in] dense ones; batch norm as weight / bias / running_mean / running_var and its step counter."""
    values = layer.get_weights()
    if isinstance(layer, keras.layers.BatchNormalization):
        params = dict(zip(("weight", "bias", "running_mean", "running_var"), values))
        params["num_batches_tracked"] = np.array(batches_tracked, np.int64)
        return params
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        params = {"weight": values[0].transpose(2, 3, 0, 1)}
    elif isinstance(layer, keras.layers.Dense):
        params = {"weight": values[0].T}
    else:
        params = {"weight": values[0].transpose(3, 2, 0, 1)}
    if len(values) > 1:
        params["bias"] = values[1]
    return params
