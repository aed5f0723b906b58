"""Weight import from keras.applications .h5 files and from reference (tensorflow/tpu) TF1 checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as et
from efficientnet_tf.models.weights import load_pretrained

import weights_helpers

TINY = dict(width_coefficient=0.25, depth_coefficient=0.5, resolution=32)


_randomize = weights_helpers.randomize
_images = weights_helpers.images


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_keras_applications_h5_files(tmp_path, suffix):
    """Both the legacy whole-model .h5 and Keras 3 .weights.h5 files of keras.applications load exactly."""
    ref = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=10)
    _randomize(ref, 0)
    path = str(tmp_path / f"b0{suffix}")
    if suffix == ".h5":
        ref.save(path)
    else:
        ref.save_weights(path)
    ours = et.build_model("efficientnet-b0", resolution=64, classes=10)
    report = load_pretrained(ours, path)
    assert not report.skipped and "predictions" in report.loaded
    images = _images(64)
    np.testing.assert_allclose(ours.predict(images, verbose=0), ref.predict(images, verbose=0), atol=1e-5)


# The reference names variables per block in creation order: with an expansion conv the convs are
# conv2d (expand) and conv2d_1 (project), the batch norms tpu_batch_normalization (expand), _1
# (depthwise) and _2 (project); without it, conv2d is the projection and the norms are plain and _1.
def _reference_variables(model: keras.Model, scope: str, bn: str = "tpu_batch_normalization") -> dict[str, np.ndarray]:
    def conv(layer):
        return {"kernel": layer.kernel}

    def norm(layer):
        return {"gamma": layer.gamma, "beta": layer.beta, "moving_mean": layer.moving_mean,
                "moving_variance": layer.moving_variance}

    out = {}

    def put(path, values):
        for name, value in values.items():
            out[f"{scope}/{path}/{name}"] = np.asarray(value)

    names = [layer.name for layer in model.layers]
    put("stem/conv2d", conv(model.get_layer("stem_conv")))
    put(f"stem/{bn}", norm(model.get_layer("stem_bn")))
    blocks = [n[: -len("dwconv")] for n in names if n.endswith("_dwconv")]
    for i, prefix in enumerate(blocks):
        b = f"blocks_{i}"
        if prefix + "expand_conv" in names:
            put(f"{b}/conv2d", conv(model.get_layer(prefix + "expand_conv")))
            put(f"{b}/{bn}", norm(model.get_layer(prefix + "expand_bn")))
            project, bn_dw, bn_project = "conv2d_1", f"{bn}_1", f"{bn}_2"
        else:
            project, bn_dw, bn_project = "conv2d", bn, f"{bn}_1"
        put(f"{b}/depthwise_conv2d", {"depthwise_kernel": model.get_layer(prefix + "dwconv").kernel})
        put(f"{b}/{bn_dw}", norm(model.get_layer(prefix + "bn")))
        for se, layer in (("se/conv2d", "se_reduce"), ("se/conv2d_1", "se_expand")):
            put(f"{b}/{se}", {"kernel": model.get_layer(prefix + layer).kernel,
                              "bias": model.get_layer(prefix + layer).bias})
        put(f"{b}/{project}", conv(model.get_layer(prefix + "project_conv")))
        put(f"{b}/{bn_project}", norm(model.get_layer(prefix + "project_bn")))
    put("head/conv2d", conv(model.get_layer("top_conv")))
    put(f"head/{bn}", norm(model.get_layer("top_bn")))
    dense = model.get_layer("predictions")
    put("head/dense", {"kernel": dense.kernel, "bias": dense.bias})
    return out


def _write_checkpoint(prefix: str, variables: dict[str, np.ndarray]) -> None:
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])


def test_reference_checkpoint_names_and_ema(tmp_path):
    """A TF1 checkpoint with tensorflow/tpu's names loads exactly; EMA shadows win over raw values."""
    trained = et.build_model("efficientnet-b0", classes=5, **TINY)
    _randomize(trained, 3)
    shadows = _reference_variables(trained, "efficientnet-b0")
    assert "efficientnet-b0/blocks_0/depthwise_conv2d/depthwise_kernel" in shadows
    assert "efficientnet-b0/blocks_1/tpu_batch_normalization_2/moving_variance" in shadows
    # Raw variables hold other (wrong) values; their /ExponentialMovingAverage shadows hold the model's.
    stored = {name: value + 1.0 for name, value in shadows.items()}
    stored.update({f"{name}/ExponentialMovingAverage": value for name, value in shadows.items()})
    stored["global_step"] = np.array(1234, np.int64)
    prefix = str(tmp_path / "model.ckpt-1234")
    _write_checkpoint(prefix, stored)

    fresh = et.build_model("efficientnet-b0", classes=5, **TINY)
    report = load_pretrained(fresh, prefix)
    # The reference normalises outside the network; our in-model normalisation is kept as built.
    assert list(report.skipped) == ["normalization"]
    images = _images()
    np.testing.assert_allclose(fresh.predict(images, verbose=0), trained.predict(images, verbose=0), atol=1e-6)
    # The directory form finds the latest checkpoint through the `checkpoint` index file.
    with open(tmp_path / "checkpoint", "w") as handle:
        handle.write('model_checkpoint_path: "model.ckpt-1234"\n')
    assert list(load_pretrained(et.build_model("efficientnet-b0", classes=5, **TINY), str(tmp_path)).skipped) == [
        "normalization"]


def test_reference_checkpoint_new_head_and_plain_batch_norm(tmp_path):
    """A different class count or include_top=False skips the head; `batch_normalization` names work."""
    trained = et.build_model("efficientnet-b0", classes=5, **TINY)
    _randomize(trained, 4)
    prefix = str(tmp_path / "ckpt")
    _write_checkpoint(prefix, _reference_variables(trained, "efficientnet-b0", bn="batch_normalization"))

    three = et.build_model("efficientnet-b0", classes=3, **TINY)
    report = load_pretrained(three, prefix)
    assert sorted(report.skipped) == ["normalization", "predictions"] and "class count" in report.skipped["predictions"]
    np.testing.assert_array_equal(np.asarray(three.get_layer("top_conv").kernel),
                                  np.asarray(trained.get_layer("top_conv").kernel))

    backbone = et.build_model("efficientnet-b0", include_top=False, pooling="avg", **TINY)
    report = load_pretrained(backbone, prefix)
    assert list(report.skipped) == ["normalization"]
    pooled = keras.Model(trained.input, trained.get_layer("avg_pool").output)
    images = _images()
    np.testing.assert_allclose(backbone.predict(images, verbose=0), pooled.predict(images, verbose=0), atol=1e-5)


def test_bad_weight_sources(tmp_path):
    model = et.build_model("efficientnet-b0", classes=5, **TINY)
    with pytest.raises(et.UserError, match="does not exist"):
        load_pretrained(model, str(tmp_path / "missing.h5"))
    with pytest.raises(et.UserError, match="not found"):
        load_pretrained(model, str(tmp_path / "missing-ckpt"))
    prefix = str(tmp_path / "other")
    _write_checkpoint(prefix, {"resnet/conv1/kernel": np.zeros((3, 3, 3, 8), np.float32)})
    with pytest.raises(et.UserError, match="not an EfficientNet reference checkpoint"):
        load_pretrained(model, prefix)
