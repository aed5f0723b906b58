"""Standard TFLite model metadata (the `TFLITE_METADATA` schema, version 1.x) for image classifiers.

MediaPipe Tasks' `ImageClassifier`, the TFLite Task Library, Android Studio's ML Model Binding and
LiteRT's code generator read a model's preprocessing and class names from a flatbuffer stored in
the `.tflite` file under the metadata name `TFLITE_METADATA` (file identifier `M001`), plus the
files it refers to (here the labels) packed into the `.tflite` as an uncompressed zip archive
appended after the model. This module writes that flatbuffer with the `flatbuffers` package from
the published schema (`metadata_schema.fbs`, Apache-2.0); nothing of Google's metadata writers is
needed. Only schema 1.0.0 fields are used, so `min_parser_version` is 1.0.0.

Field slots below are the schema's declaration order; a union field takes two slots (its type,
then its value).
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import Sequence

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.tools import flatbuffer_utils

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"

# Enum values of the schema.
_TENSOR_AXIS_LABELS = 2
_COLOR_SPACE_RGB = 1
_CONTENT_FEATURE_PROPERTIES = 1
_CONTENT_IMAGE_PROPERTIES = 2
_PROCESS_UNIT_NORMALIZATION = 1


@dataclasses.dataclass(frozen=True)
class ClassifierMetadata:
    """What the standard metadata of an image classifier says.

    `mean` / `std` are the NormalizationOptions a client applies to float inputs
    ((pixel - mean) / std); our models normalise inside the graph, so they take 0..255 pixels and
    the options are mean 0, std 1. `input_min` / `input_max` are the input's stats (what a
    client feeds after normalisation).
    """

    name: str
    description: str
    version: str
    author: str
    license: str
    image_size: int
    labels: Sequence[str]
    labels_file: str = "labels.txt"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    input_min: float = 0.0
    input_max: float = 255.0
    output_description: str = "Probabilities of the classes, in the order of the labels file."


def _string(builder: flatbuffers.Builder, value: str | None) -> int | None:
    return None if value is None else builder.CreateString(value)


def _vector_of_offsets(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _vector_of_floats(builder: flatbuffers.Builder, values: Sequence[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(float(value))
    return builder.EndVector()


def _table(builder: flatbuffers.Builder, fields: dict[int, tuple[str, object]]) -> int:
    """One table from {slot: (kind, value)}; kinds: offset, uint8, uint32. None values are left out."""
    builder.StartObject(max(fields) + 1 if fields else 0)
    for slot, (kind, value) in fields.items():
        if value is None:
            continue
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "uint8":
            builder.PrependUint8Slot(slot, value, 0)
        elif kind == "uint32":
            builder.PrependUint32Slot(slot, value, 0)
        else:  # pragma: no cover - a programming error
            raise ValueError(kind)
    return builder.EndObject()


def _stats(builder: flatbuffers.Builder, low: float, high: float) -> int:
    maximum, minimum = _vector_of_floats(builder, [high]), _vector_of_floats(builder, [low])
    return _table(builder, {0: ("offset", maximum), 1: ("offset", minimum)})


def build(meta: ClassifierMetadata) -> bytes:
    """The ModelMetadata flatbuffer (with file identifier M001) for an image classifier."""
    builder = flatbuffers.Builder(1024)

    # Input: an RGB image with its normalisation and value range.
    size = _table(builder, {0: ("uint32", meta.image_size), 1: ("uint32", meta.image_size)})
    image_properties = _table(builder, {0: ("uint8", _COLOR_SPACE_RGB), 1: ("offset", size)})
    input_content = _table(builder, {0: ("uint8", _CONTENT_IMAGE_PROPERTIES), 1: ("offset", image_properties)})
    mean, std = _vector_of_floats(builder, meta.mean), _vector_of_floats(builder, meta.std)
    normalization = _table(builder, {0: ("offset", mean), 1: ("offset", std)})
    unit = _table(builder, {0: ("uint8", _PROCESS_UNIT_NORMALIZATION), 1: ("offset", normalization)})
    input_units = _vector_of_offsets(builder, [unit])
    input_stats = _stats(builder, meta.input_min, meta.input_max)
    input_name, input_description = _string(builder, "image"), _string(
        builder, f"RGB image, {meta.image_size}x{meta.image_size}, pixel values 0..255 (the model normalises inside)"
    )
    input_tensor = _table(builder, {
        0: ("offset", input_name), 1: ("offset", input_description), 3: ("offset", input_content),
        4: ("offset", input_units), 5: ("offset", input_stats),
    })  # fmt: skip

    # Output: class probabilities with the labels file.
    labels_name = _string(builder, meta.labels_file)
    labels_description = _string(builder, "Class names, one per line, in the order of the output")
    labels = _table(builder, {0: ("offset", labels_name), 1: ("offset", labels_description),
                              2: ("uint8", _TENSOR_AXIS_LABELS)})  # fmt: skip
    output_files = _vector_of_offsets(builder, [labels])
    feature = _table(builder, {})
    output_content = _table(builder, {0: ("uint8", _CONTENT_FEATURE_PROPERTIES), 1: ("offset", feature)})
    output_stats = _stats(builder, 0.0, 1.0)
    output_name, output_description = _string(builder, "probability"), _string(builder, meta.output_description)
    output_tensor = _table(builder, {
        0: ("offset", output_name), 1: ("offset", output_description), 3: ("offset", output_content),
        5: ("offset", output_stats), 6: ("offset", output_files),
    })  # fmt: skip

    inputs, outputs = _vector_of_offsets(builder, [input_tensor]), _vector_of_offsets(builder, [output_tensor])
    subgraph = _table(builder, {2: ("offset", inputs), 3: ("offset", outputs)})
    subgraphs = _vector_of_offsets(builder, [subgraph])
    strings = {slot: _string(builder, value) for slot, value in
               ((0, meta.name), (1, meta.description), (2, meta.version), (4, meta.author), (5, meta.license),
                (7, MIN_PARSER_VERSION))}  # fmt: skip
    root = _table(builder, {
        0: ("offset", strings[0]), 1: ("offset", strings[1]), 2: ("offset", strings[2]), 3: ("offset", subgraphs),
        4: ("offset", strings[4]), 5: ("offset", strings[5]), 7: ("offset", strings[7]),
    })  # fmt: skip
    builder.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def labels_file_content(labels: Sequence[str]) -> bytes:
    """The labels file: one UTF-8 class name per line."""
    return ("\n".join(labels) + "\n").encode("utf-8")


def add_buffer_entry(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """The TFLite model with `data` stored as a model metadata entry called `name` (replacing one of that name)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = tflite_schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = tflite_schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (name, name.encode())]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def attach(flatbuffer: bytes, meta: ClassifierMetadata) -> bytes:
    """The model with standard metadata and its labels file packed in (a zip after the flatbuffer)."""
    with_metadata = add_buffer_entry(flatbuffer, METADATA_NAME, build(meta))
    archive = io.BytesIO()
    archive.write(with_metadata)
    # Appending to bytes that are not a zip starts a new archive after them; members are stored,
    # not compressed, so that clients can map them straight out of the model file.
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_STORED) as packed:
        packed.writestr(meta.labels_file, labels_file_content(meta.labels))
    return archive.getvalue()


def read_buffer_entry(flatbuffer: bytes, name: str) -> bytes | None:
    """The bytes of the model metadata entry called `name`, or None."""
    model = tflite_schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == name.encode():
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def packed_files(content: bytes) -> dict[str, bytes]:
    """The files packed into a .tflite after the model ({} when none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as packed:
            return {name: packed.read(name) for name in packed.namelist()}
    except zipfile.BadZipFile:
        return {}
