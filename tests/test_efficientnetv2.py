"""EfficientNetV2: the Fused-MBConv block against a hand-built Keras equivalent, the family's tables and counts,
parity with keras.applications on real photos, weight import (keras .h5, timm's tf_efficientnetv2 names, named
weights through a local mirror), and the V2 training recipe as configuration."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as et
from efficientnet_tf import hparams, study
from efficientnet_tf.data.sources import embedded_root
from efficientnet_tf.models import counting, scaling
from efficientnet_tf.models.layers import BLOCK_KINDS, block_kind, fused_mbconv_block
from efficientnet_tf.models.normalization import normalization_of
from efficientnet_tf.models.weights import fetch, load_pretrained, published
from efficientnet_tf.models.weights.torch_names import load_torch_weights
from efficientnet_tf.study import candidates, plan

import torch_save
from test_pretrained import mirror  # noqa: F401  (the fixture: an HTTP server on 127.0.0.1)

# keras.applications' totals (Keras 3.15, weights=None, 1000 classes). Ours hold 7 more values: the mean,
# variance and count of the input normalisation layer, which keras.applications' V2 folds into constants
# (B0-B3) or a Rescaling (S/M/L); the trainable weights are the same, shape for shape.
KERAS_V2_PARAMS = {"B0": 7_200_312, "B1": 8_212_124, "B2": 10_178_374, "B3": 14_467_622, "S": 21_612_360,
                   "M": 54_431_388, "L": 119_027_848}
NORMALIZATION_VALUES = 7
TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, resolution=32)


def _randomize(model: keras.Model, seed: int) -> None:
    """Random weights that keep activations in range at any depth (kernels ~ He, batch-norm values in
    0.5..1.5), so logits stay finite and a misrouted copy shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) or not layer.weights:
            continue
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.ndim == 1 else
                           (rng.normal(0, 1, w.shape) * np.sqrt(2.0 / max(1, np.prod(w.shape[:-1])))).astype(w.dtype)
                           for w in layer.get_weights()])


def _photos(size: int, count: int = 4) -> np.ndarray:
    """`count` embedded hold-out photos (one per class), resized to size x size, float32 0..255."""
    paths = [sorted(glob.glob(os.path.join(folder, "*.jpg")))[0]
             for folder in sorted(glob.glob(os.path.join(embedded_root(), "val", "*")))[:count]]
    images = [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(p), channels=3), (size, size), antialias=True)
              for p in paths]
    return np.stack([np.asarray(i) for i in images]).astype(np.float32)


# --- the block --------------------------------------------------------------------------------------

def _hand_built(inputs: keras.KerasTensor, block: scaling.ScaledBlock) -> keras.KerasTensor:
    """Fused-MBConv written out with stock Keras layers, from the paper / docs/recipe.md §7."""
    def bn(x):
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)(x)

    expanded = block.filters_in * block.expand_ratio
    x = inputs
    if block.expand_ratio != 1:  # kxk full convolution expands
        x = keras.layers.Conv2D(expanded, block.kernel_size, block.strides, "same", use_bias=False)(x)
        x = keras.layers.Activation("swish")(bn(x))
    if block.se_ratio:
        s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = keras.layers.Conv2D(max(1, int(block.filters_in * block.se_ratio)), 1, activation="swish")(s)
        s = keras.layers.Conv2D(expanded, 1, activation="sigmoid")(s)
        x = keras.layers.Multiply()([x, s])
    if block.expand_ratio != 1:  # 1x1 projection, no activation
        x = bn(keras.layers.Conv2D(block.filters_out, 1, use_bias=False)(x))
    else:  # the kxk convolution maps in -> out itself, with the activation
        x = keras.layers.Conv2D(block.filters_out, block.kernel_size, block.strides, "same", use_bias=False)(x)
        x = keras.layers.Activation("swish")(bn(x))
    if block.strides == 1 and block.filters_in == block.filters_out:
        x = keras.layers.Add()([x, inputs])
    return x


@pytest.mark.parametrize("expand, strides, filters_in, filters_out, se", [
    (4, 1, 8, 8, 0.0),    # V2's fused stages after the first: expand, project, residual
    (1, 1, 8, 8, 0.0),    # V2-S/M/L's first stage: the kxk convolution alone, residual
    (1, 2, 8, 16, 0.0),   # V2-B0's first block shape, strided, no residual
    (4, 2, 8, 16, 0.25),  # squeeze-excite on the expanded channels (no V2 table has it; the kind supports it)
])
def test_fused_mbconv_matches_a_hand_built_keras_block(expand, strides, filters_in, filters_out, se):
    """Outputs (inference and training-mode batch norm) and gradients (to the input and every weight) agree."""
    block = scaling.ScaledBlock("block2a_", 1, 3, filters_in, filters_out, expand, strides, se, 0.0, "fused", "dwconv2")
    inputs = keras.Input((12, 12, filters_in))
    ours = keras.Model(inputs, fused_mbconv_block(inputs, block, activation="swish", batch_norm_momentum=0.9))
    reference_input = keras.Input((12, 12, filters_in))
    reference = keras.Model(reference_input, _hand_built(reference_input, block))
    _randomize(ours, 1)
    ours_weighted = [layer for layer in ours.layers if layer.weights]
    reference_weighted = [layer for layer in reference.layers if layer.weights]
    assert len(ours_weighted) == len(reference_weighted)
    for mine, theirs in zip(ours_weighted, reference_weighted):
        theirs.set_weights(mine.get_weights())
    x = tf.constant(np.random.default_rng(2).normal(0, 1, (3, 12, 12, filters_in)).astype(np.float32))
    probe = tf.constant(np.random.default_rng(3).normal(0, 1, ours.output.shape[1:]).astype(np.float32))
    for training in (False, True):
        results = []
        for model in (ours, reference):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = model(x, training=training)
                loss = tf.reduce_sum(out * probe)
            grads = tape.gradient(loss, [x, *model.trainable_weights])
            results.append((out.numpy(), [g.numpy() for g in grads]))
        (out_a, grads_a), (out_b, grads_b) = results
        np.testing.assert_allclose(out_a, out_b, rtol=1e-4, atol=1e-5)
        assert len(grads_a) == len(grads_b)
        for a, b in zip(grads_a, grads_b):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(b).max())))
    names = {layer.name for layer in ours.layers}
    assert "block2a_project_conv" in names and ("block2a_expand_conv" in names) == (expand != 1)
    assert ("block2a_add" in names) == (strides == 1 and filters_in == filters_out)
    assert not any("dwconv" in n for n in names)  # no depthwise convolution in a fused block


def test_one_registry_of_block_kinds_builds_every_family():
    """The builder reads `kind` from the table: V1 is all MBConv, V2 fused then MBConv; an unknown kind is one line."""
    assert set(BLOCK_KINDS) == {"mbconv", "fused"}
    v1 = scaling.scaled_blocks(scaling.get_variant("efficientnet-b0"))
    assert {b.kind for b in v1} == {"mbconv"} and {b.depthwise_name for b in v1} == {"dwconv"}
    kinds = [(b.kind, b.se_ratio) for b in scaling.scaled_blocks(scaling.get_variant("efficientnetv2-b0"))]
    assert kinds == [("fused", 0.0)] * 5 + [("mbconv", 0.25)] * 16
    with pytest.raises(et.UserError, match="unknown block kind 'ghost'; registered: mbconv, fused"):
        block_kind("ghost")
    table = (dataclasses.replace(scaling.V2_BASE_BLOCKS[0], kind="ghost"),) + scaling.V2_BASE_BLOCKS[1:]
    with pytest.raises(et.UserError, match="unknown block kind 'ghost'"):
        et.build_model("efficientnetv2-b0", baseline_blocks=table, **TINY)


# --- the family -------------------------------------------------------------------------------------

def test_tables_rounding_stem_and_head_follow_the_reference():
    """Stage tables as google/automl's effnetv2_configs.py, V2's plain channel rounding (no 90% guard), depth
    rounded up, stem from the first stage's input channels, head 1280 scaled, SE from the block's input."""
    s = scaling.get_variant("efficientnetv2-s")
    assert [(b.num_repeat, b.filters_in, b.filters_out, b.expand_ratio, b.strides, b.kind) for b in s.blocks] == [
        (2, 24, 24, 1, 1, "fused"), (4, 24, 48, 4, 2, "fused"), (4, 48, 64, 4, 2, "fused"),
        (6, 64, 128, 4, 2, "mbconv"), (9, 128, 160, 6, 1, "mbconv"), (15, 160, 256, 6, 2, "mbconv")]
    assert scaling.stem_filters(s) == 24 and scaling.head_filters(s) == 1280
    assert [len(scaling.get_variant(f"efficientnetv2-{v}").blocks) for v in ("b0", "s", "m", "l", "xl")] == \
        [6, 6, 7, 7, 7]
    b3 = scaling.get_variant("efficientnetv2-b3")
    blocks = scaling.scaled_blocks(b3)
    # 16 x 1.2 = 19.2 rounds to 16 (V1's rule would add 8: 16 < 0.9 x 19.2); 1280 x 1.2 = 1536.
    assert blocks[0].filters_out == 16 and scaling.round_filters(16, 1.2) == 24
    assert scaling.stem_filters(b3) == 40 and scaling.head_filters(b3) == 1536
    assert [sum(1 for b in blocks if b.stage == i) for i in range(6)] == [2, 3, 3, 5, 7, 12]  # ceil(1.4 x n)
    assert blocks[-1].drop_rate == pytest.approx(0.2 * (len(blocks) - 1) / len(blocks))
    model = et.build_model("efficientnetv2-s", include_top=False, input_shape=(32, 32, 3), depth_coefficient=0.25)
    assert model.get_layer("block4a_se_reduce").filters == 16  # 64 input channels x 0.25, not 256 x 0.25
    assert model.get_layer("block4a_dwconv2").kernel.shape == (3, 3, 256, 1)
    assert model.get_layer("stem_bn").momentum == 0.9 and model.get_layer("stem_bn").epsilon == 1e-3
    assert model.get_layer("block1a_project_conv").kernel.shape == (3, 3, 24, 24)
    assert "block1a_project_activation" in {layer.name for layer in model.layers}


def test_normalisation_and_resize_per_variant():
    """B0-B3: ImageNet mean/std, bicubic (the reference's V1 preprocessing); S/M/L/XL: (x - 128) / 128, bilinear."""
    for name in ("efficientnetv2-b0", "efficientnetv2-b3"):
        assert (scaling.get_variant(name).normalization, scaling.get_variant(name).resize_method) == \
            ("imagenet", "bicubic")
    for name in ("efficientnetv2-s", "efficientnetv2-m", "efficientnetv2-l", "efficientnetv2-xl"):
        assert (scaling.get_variant(name).normalization, scaling.get_variant(name).resize_method) == ("v2", "bilinear")
    tiny = dict(TINY, include_top=False)
    model = et.build_model("efficientnetv2-s", **tiny)
    norm = keras.Model(model.input, model.get_layer("normalization").output)
    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, 0, :3] = np.array([0.0, 128.0, 255.0], np.float32)[:, None]
    np.testing.assert_allclose(np.asarray(norm(image))[0, 0, :3, 0], [-1.0, 0.0, 127 / 128], atol=1e-5)
    assert normalization_of(model) == "v2"


def test_v2_b0_counts_and_summary_row():
    """`--mode=summary`'s V2-B0 row at 224 px: 0.718 B multiply-adds (the reference's table: 0.72 B) and 7.14 M
    trainable parameters (7.1 M); 7.20 M in all, as keras.applications counts (exact count: the parity test)."""
    table = counting.summary_table(("efficientnetv2-b0",))
    assert "res is the evaluation size" in table.splitlines()[-1]
    row = table.splitlines()[2].split()
    assert row[:7] == ["efficientnetv2-b0", "224", "1.00", "1.00", "7.20M", "7.14M", "7.1M"]
    assert row[7:10] == ["0.718B", "0.72B", "-0.3%"]


@pytest.mark.slow  # builds every V2 variant at its evaluation size (L and XL: half a minute each here)
@pytest.mark.parametrize("name, params, madds", [
    ("efficientnetv2-b1", 8.1, 1.2), ("efficientnetv2-b2", 10.1, 1.7), ("efficientnetv2-b3", 14.4, 3.0),
    ("efficientnetv2-s", 21.5, 8.4), ("efficientnetv2-m", 54.1, 24.7), ("efficientnetv2-l", 119.5, 56.3),
    ("efficientnetv2-xl", 208.0, 94.0),
])
def test_counts_match_the_published_tables(name, params, madds):
    """Trainable params and multiply-adds at the evaluation size within 1% of the reference's tables (XL: the
    paper's Table 7)."""
    counts = counting.variant_counts(name)
    assert counts.trainable_params / 1e6 == pytest.approx(params, rel=0.01)
    assert counts.madds / 1e9 == pytest.approx(madds, rel=0.01)


def test_backbone_endpoints():
    """Strides 2..32; V2-B0's first endpoint is its non-residual fused block's activation."""
    assert et.endpoint_layer_names("efficientnetv2-b0") == {
        "reduction_1": "block1a_project_activation", "reduction_2": "block2b_add", "reduction_3": "block3b_add",
        "reduction_4": "block5e_add", "reduction_5": "block6h_add"}
    # Tiny V2-S: its first stage is residual (24 -> 24), so reduction_1 is an add there.
    assert et.endpoint_layer_names("efficientnetv2-s", 0.25)["reduction_1"] == "block1a_add"
    backbone = et.build_backbone("efficientnetv2-s", width_coefficient=0.25, depth_coefficient=0.25)
    out = backbone(np.zeros((1, 64, 64, 3), np.float32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "reduction_1": (1, 32, 32, 8), "reduction_2": (1, 16, 16, 16), "reduction_3": (1, 8, 8, 16),
        "reduction_4": (1, 4, 4, 40), "reduction_5": (1, 2, 2, 64)}


# --- parity with keras.applications ---------------------------------------------------------------------

def _keras_parity(tmp_path: pathlib.Path, keras_name: str, ours_name: str, size: int) -> None:
    """keras.applications' model with random weights, saved as a legacy .h5 (what its downloads are), imported
    into ours: same parameter shapes and count, logits within 1e-4 on real photos, same top-1."""
    ref = getattr(keras.applications, f"EfficientNetV2{keras_name}")(
        weights=None, input_shape=(size, size, 3), classifier_activation=None)
    ours = et.build_model(ours_name, resolution=size, classifier_activation=None)
    assert ours.count_params() == ref.count_params() + NORMALIZATION_VALUES == \
        KERAS_V2_PARAMS[keras_name] + NORMALIZATION_VALUES
    assert [w.shape for w in ours.trainable_weights] == [w.shape for w in ref.trainable_weights]
    _randomize(ref, seed=len(keras_name))
    path = tmp_path / f"efficientnetv2-{keras_name.lower()}.h5"
    ref.save(path)
    report = load_pretrained(ours, str(path))
    assert "predictions" in report.loaded and list(report.skipped) == ["normalization"]  # keras has no variables there
    photos = _photos(size)
    # Called directly, not through predict(): tracing a predict function costs more than the check.
    expected, got = ref(photos, training=False).numpy(), ours(photos, training=False).numpy()
    assert np.abs(expected).max() > 1.0  # logits, not all near zero
    assert np.max(np.abs(got - expected)) <= 1e-4
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_v2_b0_matches_keras_applications_on_real_photos(tmp_path):
    _keras_parity(tmp_path, "B0", "efficientnetv2-b0", 64)


@pytest.mark.slow  # V2-S builds and predicts in about 20 s here; B0 keeps the fast tier's parity check
def test_v2_s_matches_keras_applications_on_real_photos(tmp_path):
    """S normalises with (x - 128) / 128 as keras' Rescaling(1/128, offset=-1) does."""
    _keras_parity(tmp_path, "S", "efficientnetv2-s", 64)


@pytest.mark.slow  # one full-size build per variant
@pytest.mark.parametrize("keras_name", ["B1", "B2", "B3", "M", "L"])
def test_parameter_counts_equal_keras_applications(keras_name):
    ref = getattr(keras.applications, f"EfficientNetV2{keras_name}")(weights=None, input_shape=(64, 64, 3))
    ours = et.build_model(f"efficientnetv2-{keras_name.lower()}", resolution=64)
    assert ours.count_params() == ref.count_params() + NORMALIZATION_VALUES == \
        KERAS_V2_PARAMS[keras_name] + NORMALIZATION_VALUES
    assert [(w.path.split("/")[0], w.shape) for w in ours.trainable_weights] == \
        [(w.path.split("/")[0], w.shape) for w in ref.trainable_weights]


# --- weight import: timm names and named weights -----------------------------------------------------

# timm's EfficientNetV2 modules (timm/models/_efficientnet_blocks.py): Fused-MBConv without expansion is its
# ConvBnAct ("cn"), with expansion its EdgeResidual ("er"), MBConv its InvertedResidual ("ir").
TIMM_CN = {"project_conv": "conv", "project_bn": "bn1"}
TIMM_ER = {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2"}
TIMM_IR = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv2": "conv_dw", "bn": "bn2",
           "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
           "project_bn": "bn3"}


def _timm_state_dict(model: keras.Model, variant: str, **scale) -> dict[str, np.ndarray]:
    """The model's weights under timm's tf_efficientnetv2 names, in PyTorch layouts (OIHW, [C, 1, k, k], [out, in])."""
    out: dict[str, np.ndarray] = {}

    def put(module: str, layer_name: str) -> None:
        out.update({f"{module}.{p}": v for p, v in torch_save.torch_params(model.get_layer(layer_name), 7).items()})

    put("conv_stem", "stem_conv")
    put("bn1", "stem_bn")
    stage_index: dict[int, int] = {}
    variant_spec = scaling.get_variant(variant)
    for block in scaling.scaled_blocks(variant_spec, width=scale.get("width"), depth=scale.get("depth")):
        index = stage_index[block.stage] = stage_index.get(block.stage, -1) + 1
        table = TIMM_IR if block.kind == "mbconv" else TIMM_ER if block.expand_ratio != 1 else TIMM_CN
        for ours, theirs in table.items():
            put(f"blocks.{block.stage}.{index}.{theirs}", block.name + ours)
    put("conv_head", "top_conv")
    put("bn2", "top_bn")
    put("classifier", "predictions")
    return out


def test_timm_tf_efficientnetv2_names_import_exactly(tmp_path):
    """A tf_efficientnetv2_s state dict (every timm block type, residual fused blocks included) loads with every
    tensor used, TensorFlow 'same' padding recognised from the name, and the same outputs."""
    source = et.build_model("efficientnetv2-s", classes=10, **TINY)
    _randomize(source, 4)
    tensors = _timm_state_dict(source, "efficientnetv2-s", width=0.25, depth=0.25)
    assert {"blocks.0.0.conv.weight", "blocks.1.0.conv_exp.weight", "blocks.3.0.conv_dw.weight"} <= set(tensors)
    path = tmp_path / "tf_efficientnetv2_s.pth"
    torch_save.write_pth(path, torch_save.tensor_records(tensors), legacy=True)  # zip: the named-weights test
    ours = et.build_model("efficientnetv2-s", classes=10, **TINY)
    report = load_torch_weights(ours, path)
    assert report.naming == "timm" and not report.unused and not report.warnings and "'same'" in report.padding
    assert len(report.used) + len(report.ignored) == len(tensors)
    images = _photos(32)
    np.testing.assert_array_equal(ours(images, training=False).numpy(), source(images, training=False).numpy())
    # A V1 state dict has no place in a V2 model: one line, naming the first tensor.
    v1 = et.build_model("efficientnet-b0", classes=10, **TINY)
    with pytest.raises(et.UserError, match="no place in this model|lacks weights"):
        load_torch_weights(v1, path)


def _md5(path: pathlib.Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _serve(root: pathlib.Path, url: str, source: pathlib.Path) -> None:
    dest = root.joinpath(*fetch.relative_path(url).split("/"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)


def test_named_weights_through_a_mirror_set_the_v2_normalisation(mirror, tmp_path, monkeypatch):  # noqa: F811
    """weights="imagenet" (keras.applications' efficientnetv2-s.h5, md5 checked) and "timm" (the
    tf_efficientnetv2_s port) fetch their rows' files by official path below a local mirror, and the model
    built with ImageNet mean/std switches to the (x - 128) / 128 the weights were trained with."""
    root, base = mirror
    monkeypatch.setenv(published.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(published.MIRROR_ENV, base)
    monkeypatch.chdir(tmp_path)
    source = et.build_model("efficientnetv2-s", **TINY)
    _randomize(source, 5)
    h5 = tmp_path / "made.h5"
    source.save(h5)
    key = ("efficientnetv2-s", "imagenet")
    entry = published.TABLE[key]
    assert entry.file.url == published.KERAS_APPLICATIONS_V2 + "efficientnetv2-s.h5"
    monkeypatch.setitem(published.TABLE, key, dataclasses.replace(
        entry, file=published.WeightsFile(entry.file.url, _md5(h5))))
    _serve(root, entry.file.url, h5)
    pth = tmp_path / "made.pth"
    torch_save.write_pth(pth, torch_save.tensor_records(_timm_state_dict(source, "efficientnetv2-s", width=0.25,
                                                                          depth=0.25)), legacy=False)
    timm_entry = published.resolve("TIMM", "efficientnetv2_s")
    assert timm_entry.file.url.endswith("/v0.1-effv2-weights/tf_efficientnetv2_s-eb54923e.pth")
    _serve(root, timm_entry.file.url, pth)
    images = _photos(32)
    expected = source(images, training=False).numpy()
    for name, kind in (("imagenet", "keras_h5"), ("timm", "torch")):
        model = et.build_model("efficientnetv2-s", normalization="imagenet", **TINY)
        report = load_pretrained(model, name)
        assert report.kind == kind and report.normalization == "v2" == normalization_of(model)
        official = published.resolve(name, "efficientnetv2-s").file.url
        assert report.source_url == f"{base}/{fetch.relative_path(official)}"
        np.testing.assert_allclose(model(images, training=False).numpy(), expected, atol=1e-5)
    with pytest.raises(et.UserError, match="efficientnetv2-xl has no 'imagenet' weights; weights names for "
                                           "efficientnetv2-xl: timm-in21k"):
        published.resolve("imagenet", "efficientnetv2-xl")


# --- the training recipe --------------------------------------------------------------------------------

def _resolved(model: str, *overrides: str, dataset: str = "imagenet"):
    config = hparams.build_config(list(overrides), {"model.name": model, "data.dataset": dataset})
    return hparams.resolve(config, num_classes=1000, num_train=1_281_167)


@pytest.mark.parametrize("model, sizes, randaug, mixup, dropout", [
    # The paper's Table 6 (min -> max), 4 stages; sizes rounded to 16 px except the last.
    ("efficientnetv2-s", [128, 192, 240, 300], (5, 15), (0, 0), (0.1, 0.3)),
    ("efficientnetv2-m", [128, 208, 288, 380], (5, 20), (0, 0.2), (0.1, 0.4)),
    ("efficientnetv2-l", [128, 208, 288, 380], (5, 25), (0, 0.4), (0.1, 0.5)),
])
def test_progressive_stages_follow_the_papers_table_6(model, sizes, randaug, mixup, dropout):
    config = _resolved(model)
    stages = config.derived.stages
    assert config.derived.progressive and [s.image_size for s in stages] == sizes
    assert config.model.image_size == scaling.get_variant(model).resolution  # evaluation above the last size
    assert [s.randaug_magnitude for s in stages] == pytest.approx(np.linspace(*randaug, 4))
    assert [s.mixup_alpha for s in stages] == pytest.approx(np.linspace(*mixup, 4))
    assert [s.dropout_rate for s in stages] == pytest.approx(np.linspace(*dropout, 4))
    assert config.data.augment == "randaugment" and config.data.resize_method == "bilinear"
    # The reference's optimizer and schedule, at its batch of 4096.
    train = config.train
    assert (train.optimizer, train.base_learning_rate, train.lr_schedule, train.warmup_epochs, train.lr_decay_rate,
            train.lr_decay_epochs, train.epochs, train.batch_size, train.ema_decay, train.label_smoothing) == \
        ("rmsprop", 0.016, "exponential", 5.0, 0.97, 2.4, 350.0, 4096, 0.9999, 0.1)


def test_b0_takes_the_reference_settings_and_the_short_recipe_turns_them_off():
    """V2-B0 (no Table 6 row): the reference's 128 -> 192 px with V1's AutoAugment, no mixup, constant dropout 0.2,
    evaluation at 224; the embedded default dataset's short recipe trains at 96 px without stages, as V1 does."""
    config = _resolved("efficientnetv2-b0")
    stages = config.derived.stages
    assert [s.image_size for s in stages] == [128, 144, 176, 192] and config.model.image_size == 224
    assert {s.dropout_rate for s in stages} == {0.2} and {s.mixup_alpha for s in stages} == {0.0}
    assert config.data.augment == "autoaugment" and config.data.resize_method == "bicubic"
    # Batch-norm momentum comes with the family: V2's reference 0.9, V1's 0.99 (Keras convention).
    assert (config.model.batch_norm_momentum, _resolved("efficientnet-b0").model.batch_norm_momentum) == (0.9, 0.99)
    v2, v1 = (hparams.resolve(hparams.build_config([], {"model.name": name}), num_classes=10, num_train=800)
              for name in ("efficientnetv2-b0", "efficientnet-b0"))
    assert not v2.derived.progressive and len(v2.derived.stages) == 1
    assert hparams.differences(v2, v1) == {"model.name": ("efficientnetv2-b0", "efficientnet-b0")}
    assert _resolved("efficientnetv2-xl").derived.stages[-1].image_size == 384


# --- the scaling study ----------------------------------------------------------------------------------

def _v2_study_spec():
    return study.parse_spec({
        "dataset": "synthetic", "steps": 2, "batch_size": 16, "hparams": ["hparams/imagenette.yaml"],
        "baseline": {"model": "efficientnetv2-b0", "width": 0.25, "depth": 0.25, "resolution": 32},
        "curves": {"dimensions": ["width"], "multiples": [2]}})


def test_scaling_study_takes_the_v2_base_and_refuses_hand_sized_members():
    """A study may scale EfficientNetV2-B0 (the paper scales it to B1-B3 by V1's compound rule): its arms are
    V2 networks; V2-S is sized by hand, so it is refused in one line."""
    spec = _v2_study_spec()
    assert spec.baseline.blocks == scaling.V2_BASE_BLOCKS and spec.baseline.model_name == "efficientnetv2-b0"
    assert spec.to_dict()["baseline"]["model"] == "efficientnetv2-b0"
    arm = plan.arm_config(spec, width=0.5, depth=0.25, resolution=32, seed=0)
    assert arm.model.name == "efficientnetv2-b0" and arm.train.progressive.stages == 0
    with pytest.raises(et.UserError) as caught:
        study.parse_spec({"dataset": "synthetic", "curves": {}, "baseline": {"model": "efficientnetv2-s"}})
    assert "\n" not in str(caught.value) and "efficientnetv2-s" in str(caught.value) and "by hand" in str(caught.value)


@pytest.mark.slow  # builds the tiny network twice (about 10 s here)
def test_scaling_study_counts_v2_networks():
    spec = _v2_study_spec()
    counted = candidates.count_network(spec.baseline, 0.25, 0.25, 32, 10)
    built = et.build_model("efficientnetv2-b0", classes=10, **TINY)
    assert counted.madds == counting.count_madds(built) and counted.params == built.count_params()
