"""PyTorch state dicts read without torch: tensors by name, as numpy arrays.

Reads `.pth` / `.pt` / `.bin` state dicts in torch's legacy and zip formats through a restricted
unpickler that only rebuilds tensors and plain containers, `.safetensors` files, and `.whl` / `.zip`
archives holding exactly one such file.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

from efficientnet_tf.errors import UserError, first_line

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_INNER_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}


# --- safe stand-ins for the only globals a state dict pickle needs ---------------------------------

def _refuse_state(self: Any, state: Any) -> None:
    """__setstate__ of the stand-ins: pickle's BUILD must not alter them (they are shared)."""
    raise UserError("malformed file: the pickle tries to set the state of a torch object")


# Each class defines __setstate__ itself, else dataclass(slots=True) adds one that BUILD would call.
@dataclasses.dataclass(frozen=True, slots=True)
class _Global:
    """An allowed pickle global: frozen, slotted and refusing BUILD, so a file cannot alter it."""

    name: str
    call: Callable[..., Any] | None = None
    dtype: str = ""  # for storage types
    __setstate__ = _refuse_state

    def __call__(self, *args: Any) -> Any:
        if self.call is None:
            raise UserError(f"malformed file: {self.name} is called")
        return self.call(*args)


@dataclasses.dataclass(slots=True)
class _Storage:
    key: str
    dtype: str
    numel: int
    array: np.ndarray | None = None
    __setstate__ = _refuse_state


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    __setstate__ = _refuse_state


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise UserError(f"malformed tensor record: {what} is {value!r:.80}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2: records where the tensor lies in its storage."""
    if not isinstance(storage, _Storage):
        raise UserError("malformed tensor record: no storage")
    (offset,), shape, strides = _ints((offset,), "offset"), _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise UserError("malformed tensor record: size and stride differ in length")
    return _TensorRef(storage, offset, shape, strides)


def _rebuild_parameter(data: Any, *_: Any) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_parameter(_with_state): a parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise UserError("malformed parameter record: no tensor")
    return data


def _rebuild_from_type(func: Any, _type: Any, args: Any, _state: Any) -> _TensorRef:
    """Stand-in for torch._tensor._rebuild_from_type_v2, limited to our own rebuilders."""
    if not (isinstance(func, _Global) and func.call in (_rebuild_tensor, _rebuild_parameter)
            and isinstance(args, tuple)):
        raise UserError("malformed tensor record: unexpected rebuild function")
    return func(*args)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset)},
    **{("torch", name): _Global(f"torch.{name}", dtype=dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{key: _Global(".".join(key), call) for key, call in {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch", "Tensor"): None,
        ("torch.nn.parameter", "Parameter"): None,
    }.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of `_SAFE_GLOBALS`; anything else is refused unrun."""

    def __init__(self, file: BinaryIO, persistent: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        if (module, name) not in _SAFE_GLOBALS:
            raise UserError(
                f"refusing to load: the pickle references {module}.{name}, which is not a tensor or "
                "plain container (only state dicts are read; nothing in the file was run)"
            )
        return _SAFE_GLOBALS[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UserError("malformed file: unexpected persistent reference")
        return self._persistent(pid)


# --- file formats ----------------------------------------------------------------------------------

def _storage_array(raw: bytes, dtype: str, numel: int, byteorder: str, where: str) -> np.ndarray:
    """The elements of one storage as a 1-D little/big-endian array (bfloat16 widened to float32)."""
    np_dtype = np.dtype(("<" if byteorder == "little" else ">") + ("u2" if dtype == "bf16" else dtype))
    if len(raw) < numel * np_dtype.itemsize:
        raise UserError(f"storage {where} is truncated ({len(raw)} bytes for {numel} elements)")
    array = np.frombuffer(raw, np_dtype, count=numel)
    if dtype == "bf16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _storage_of(pid: Any, storages: dict[str, _Storage]) -> tuple[_Storage, bool]:
    """The storage named by a persistent id, and whether it is new; view records are refused."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _Global) and pid[1].dtype and isinstance(pid[2], str)
            and type(pid[4]) is int and pid[4] >= 0):
        raise UserError(f"malformed storage record {pid!r:.80}")
    if len(pid) == 6 and pid[5] is not None:
        raise UserError("storage views (torch < 1.0 files) are not supported; re-save the file")
    if pid[2] in storages:
        return storages[pid[2]], False
    storages[pid[2]] = _Storage(pid[2], pid[1].dtype, pid[4])
    return storages[pid[2]], True


def _read_legacy(f: BinaryIO, origin: str) -> Any:
    """torch's legacy (pre-1.6, non-zip) format.

    Layout: pickles of the magic number, the protocol version and a sys-info dict; the main pickle
    (storages as persistent ids ('storage', type, key, location, numel, view)); a pickled list of
    storage keys; then per key an 8-byte little-endian element count and the raw little-endian data.
    """
    if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
        raise UserError(f"{origin} is not a PyTorch file (no torch magic number)")
    if _RestrictedUnpickler(f).load() != _LEGACY_PROTOCOL:
        raise UserError(f"{origin} has an unsupported torch protocol version")
    _RestrictedUnpickler(f).load()  # sys info: the data is little-endian whatever it says
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, lambda pid: _storage_of(pid, storages)[0]).load()
    keys = _RestrictedUnpickler(f).load()
    for key in keys if isinstance(keys, list) else ():
        if key not in storages:
            raise UserError(f"{origin}: storage {key!r} is not referenced by any tensor")
        storage = storages[key]
        (count,) = struct.unpack("<q", f.read(8))
        itemsize = 2 if storage.dtype == "bf16" else np.dtype(storage.dtype).itemsize
        storage.array = _storage_array(f.read(count * itemsize), storage.dtype, count, "little", key)
    return obj


def _read_torch_zip(zf: zipfile.ZipFile, origin: str) -> Any:
    """torch's zip format: <prefix>/data.pkl with persistent ids, storages in <prefix>/data/<key>."""
    pickles = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
        raise UserError(f"{origin}: expected one data.pkl in the torch archive, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    names = set(zf.namelist())
    byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
    storages: dict[str, _Storage] = {}

    def persistent(pid: Any) -> _Storage:
        storage, new = _storage_of(pid, storages)
        if new:
            member = f"{prefix}data/{storage.key}"
            if member not in names:
                raise UserError(f"{origin}: storage {storage.key!r} is missing from the archive")
            storage.array = _storage_array(zf.read(member), storage.dtype, storage.numel, byteorder, member)
        return storage

    return _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), persistent).load()


def _materialize(ref: _TensorRef, name: str) -> np.ndarray:
    """A tensor record as an owned numpy array, honouring its offset and strides."""
    base, shape, stride = ref.storage.array, ref.shape, ref.stride
    if not isinstance(base, np.ndarray):
        raise UserError(f"tensor {name}: its storage has no data in the file")
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, base.dtype)
    last = ref.offset + sum((d - 1) * s for d, s in zip(shape, stride))
    if last >= base.size:
        raise UserError(f"tensor {name} lies outside its storage")
    contiguous = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
    if all(s == c or d == 1 for s, c, d in zip(stride, contiguous, shape)):
        return base[ref.offset: ref.offset + count].reshape(shape).copy()
    view = np.lib.stride_tricks.as_strided(base[ref.offset:], shape, [s * base.itemsize for s in stride])
    return np.array(view)


def _state_dict_of(obj: Any, origin: str) -> dict[str, np.ndarray]:
    """The tensors of an unpickled object: a state dict, or one under 'state_dict' / 'model'."""
    if isinstance(obj, dict) and not any(isinstance(v, _TensorRef) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _state_dict_of(obj[key], origin)
    if not isinstance(obj, dict):
        raise UserError(f"{origin} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): _materialize(v, str(k)) for k, v in obj.items() if isinstance(v, _TensorRef)}
    if not tensors:
        raise UserError(f"{origin} holds no tensors")
    return tensors


def _read_safetensors(data: bytes | None, path: str) -> dict[str, np.ndarray]:
    import safetensors.numpy  # optional: only .safetensors files need it

    try:
        return dict(safetensors.numpy.load(data) if data is not None else safetensors.numpy.load_file(path))
    except Exception as err:  # safetensors raises its own error types
        raise UserError(f"cannot read {path}: {first_line(err)}") from None


def _read_stream(f: BinaryIO, name: str, origin: str) -> dict[str, np.ndarray]:
    """Tensors of one seekable file: safetensors, torch zip, an archive holding one file, or legacy."""
    head = f.read(9)
    f.seek(0)
    if name.endswith(".safetensors") or (len(head) == 9 and head[8:9] == b"{"):
        return _read_safetensors(f.read(), origin)
    try:
        if zipfile.is_zipfile(f):
            f.seek(0)
            zf = zipfile.ZipFile(f)
            if any(n.endswith("data.pkl") for n in zf.namelist()):
                return _state_dict_of(_read_torch_zip(zf, origin), origin)
            inner = [n for n in zf.namelist() if n.lower().endswith(_INNER_SUFFIXES)]
            if len(inner) != 1:
                raise UserError(f"{origin} should hold exactly one .pth/.pt/.bin/.safetensors file, found {len(inner)}")
            return _read_stream(io.BytesIO(zf.read(inner[0])), inner[0].lower(), f"{origin}:{inner[0]}")
        f.seek(0)
        return _state_dict_of(_read_legacy(f, origin), origin)
    except UserError:
        raise
    except Exception as err:  # truncated or corrupt pickles raise many types
        raise UserError(f"cannot read {origin} as a PyTorch state dict: {first_line(err)}") from None


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .pth/.pt/.bin (legacy or zip), .safetensors, or .whl/.zip holding one such file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} does not exist")
    if path.lower().endswith(".safetensors"):
        return _read_safetensors(None, path)
    with open(path, "rb") as f:
        return _read_stream(f, path.lower(), path)
