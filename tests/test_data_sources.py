"""Dataset sources: ImageNet-format TFRecords, image folders with bad files, TFDS."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import data
from efficientnet_tf.errors import UserError

import pipeline_defaults as defaults

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _colour(label: int) -> tuple[int, int, int]:
    """A solid colour that encodes a 0-based label (and survives JPEG)."""
    return (20 + 23 * (label % 10), 240 - 19 * (label // 10 % 10), 128)


def _solid_jpeg(label: int, size: int = 40) -> bytes:
    image = np.zeros((size, size + 8, 3), np.uint8) + np.array(_colour(label), np.uint8)
    return tf.io.encode_jpeg(tf.constant(image), quality=95).numpy()


def _example(encoded: bytes, label_1_based: int, filename: str) -> bytes:
    """A tf.train.Example in the reference ImageNet converter's format."""

    def b(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def i(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        "image/height": i(40),
        "image/width": i(48),
        "image/colorspace": b(b"RGB"),
        "image/channels": i(3),
        "image/class/label": i(label_1_based),
        "image/class/synset": b(f"n{label_1_based:08d}".encode()),
        "image/format": b(b"JPEG"),
        "image/filename": b(filename.encode()),
        "image/encoded": b(encoded),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _write_shards(directory, prefix: str, num_shards: int, per_shard: int, first_label: int = 0) -> list[int]:
    """Write `prefix-0000k-of-0000n` shards; returns the 0-based labels in file order."""
    labels = []
    for shard in range(num_shards):
        path = os.path.join(directory, f"{prefix}-{shard:05d}-of-{num_shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for k in range(per_shard):
                label = (first_label + shard * per_shard + k) % 1000
                writer.write(_example(_solid_jpeg(label), label + 1, f"{prefix}_{shard}_{k}.JPEG"))
                labels.append(label)
    return labels


def _check_colours(images: np.ndarray, labels: np.ndarray) -> None:
    for image, label in zip(images, labels, strict=True):
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), _colour(int(label)), atol=3.0)


# ----------------------------------------------------------------------------- ImageNet TFRecords


def test_imagenet_tfrecords_read_back_with_zero_based_labels(tmp_path):
    train_labels = _write_shards(tmp_path, "train", 3, 8)
    val_labels = _write_shards(tmp_path, "validation", 1, 10, first_label=990)  # includes label 1000 → 999
    src = defaults.get_source("imagenet", str(tmp_path))
    assert (src.num_classes, src.num_train, src.num_eval) == (1000, 24, 10)
    batches = list(defaults.eval_dataset(src, image_size=32, batch_size=4).as_numpy_iterator())
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    assert labels.dtype == np.int32
    assert sorted(labels.tolist()) == sorted(val_labels) and max(labels) == 999 and min(labels) == 990
    _check_colours(images, labels)
    # The training pipeline: one-hot labels at the 0-based index, images of the right colour.
    train = defaults.train_dataset(
        src, image_size=32, batch_size=6, augment="none", seed=0, deterministic=True
    )
    for images, one_hot in train.take(4).as_numpy_iterator():
        labels = one_hot.argmax(1)
        assert set(labels.tolist()) <= set(train_labels)
        _check_colours(images, labels)
    assert src.bad_files == []


def test_imagenet_minival_holds_out_whole_training_shards(tmp_path):
    _write_shards(tmp_path, "train", 10, 3)
    _write_shards(tmp_path, "validation", 1, 3)
    src = defaults.get_source("imagenet:minival", str(tmp_path), holdout_fraction=0.2)
    assert (src.num_train, src.num_eval) == (24, 6)
    train_ids = {r["id"] for r in src.records("train").as_numpy_iterator()}
    eval_ids = {r["id"] for r in src.records("eval").as_numpy_iterator()}
    assert len(train_ids) == 24 and len(eval_ids) == 6
    assert not train_ids & eval_ids
    assert all(b"train-00008" in i or b"train-00009" in i for i in eval_ids)
    # Without validation shards, plain `imagenet` evaluates on the hold-out as well.
    os.remove(os.path.join(tmp_path, "validation-00000-of-00001"))
    assert defaults.get_source("imagenet", str(tmp_path), holdout_fraction=0.2).num_eval == 6


def test_imagenet_single_shard_holdout_splits_records_without_overlap(tmp_path):
    _write_shards(tmp_path, "train", 1, 60)
    src = defaults.get_source("imagenet", str(tmp_path), holdout_fraction=0.25)
    train_ids = [r["id"] for r in src.records("train").as_numpy_iterator()]
    eval_ids = [r["id"] for r in src.records("eval").as_numpy_iterator()]
    assert len(train_ids) == src.num_train and len(eval_ids) == src.num_eval
    assert not set(train_ids) & set(eval_ids)
    assert len(train_ids) + len(eval_ids) == 60 and 5 <= len(eval_ids) <= 25
    # Stable: the same split every time.
    assert eval_ids == [r["id"] for r in src.records("eval").as_numpy_iterator()]


def test_imagenet_bad_records_are_skipped_and_reported(tmp_path):
    path = os.path.join(tmp_path, "validation-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(_example(_solid_jpeg(3), 4, "ok0"))
        writer.write(_example(_solid_jpeg(3), 0, "label0"))  # 0 is not a valid 1-based label
        writer.write(_example(_solid_jpeg(3), 1001, "label1001"))
        writer.write(_example(b"\xff\xd8\xff\xe0 definitely not a jpeg", 5, "garbage"))
        writer.write(b"not a tf.train.Example at all")
        writer.write(_example(_solid_jpeg(7), 8, "ok1"))
    _write_shards(tmp_path, "train", 1, 4)
    src = defaults.get_source("imagenet", str(tmp_path))
    labels = np.concatenate(
        [y for _, y in defaults.eval_dataset(src, image_size=16, batch_size=8).as_numpy_iterator()]
    )
    assert labels.tolist() == [3, 7]
    assert sorted(src.bad_files) == [f"{path}#{i}" for i in (1, 2, 3, 4)]
    assert src.bad_reasons[f"{path}#1"] == "label out of range"


def test_imagenet_missing_data_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data_dir"):
        defaults.get_source("imagenet")
    with pytest.raises(UserError, match="train-"):
        defaults.get_source("imagenet", str(tmp_path))


# ----------------------------------------------------------------------------- image folders


def _pil_bytes(image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
    """Class folders with a corrupt JPEG, PNG, greyscale and CMYK JPEGs, BMP, GIF and junk."""
    pil = pytest.importorskip("PIL.Image")
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    colours = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for k in range(5):
            pixels = np.clip(np.array(colour) + rng.integers(-10, 10, (40, 52, 3)), 0, 255).astype(np.uint8)
            (root / name / f"{k}.jpg").write_bytes(_pil_bytes(pil.fromarray(pixels), "JPEG", quality=90))
    cat = np.full((36, 44, 3), colours["cat"], np.uint8)
    (root / "cat" / "photo.png").write_bytes(_pil_bytes(pil.fromarray(cat), "PNG"))
    (root / "cat" / "grey.jpg").write_bytes(_pil_bytes(pil.fromarray(cat[..., 0]), "JPEG"))
    (root / "cat" / "cmyk.jpeg").write_bytes(
        _pil_bytes(pil.fromarray(cat).convert("CMYK"), "JPEG", quality=95)
    )
    (root / "dog" / "bitmap.BMP").write_bytes(
        _pil_bytes(pil.fromarray(np.full((30, 30, 3), colours["dog"], np.uint8)), "BMP")
    )
    (root / "owl" / "anim.gif").write_bytes(
        _pil_bytes(pil.fromarray(np.full((30, 30, 3), colours["owl"], np.uint8)), "GIF")
    )
    good = (root / "dog" / "0.jpg").read_bytes()
    corrupt = root / "dog" / "corrupt.jpg"
    corrupt.write_bytes(
        good[:200] + bytes(rng.integers(0, 256, 300, dtype=np.uint8))
    )  # valid header, broken body
    (root / "owl" / "empty.jpg").write_bytes(b"")
    (root / "owl" / "notes.jpg").write_text("this is text, not a picture")
    (root / "owl" / "readme.txt").write_text("ignored: not an image extension")
    (root / "yak").mkdir()  # an empty class folder
    return root, colours, str(corrupt)


def test_folder_with_bad_files_trains_a_full_epoch_and_reports_them(messy_folder):
    import keras

    root, colours, corrupt = messy_folder
    src = defaults.get_source(f"folder:{root}", holdout_fraction=0.0)
    assert src.class_names == ["cat", "dog", "owl", "yak"] and src.num_classes == 4
    # Up-front checks catch the empty and the non-image file, and the empty class folder.
    assert os.path.join(root, "owl", "empty.jpg") in src.bad_files
    assert os.path.join(root, "owl", "notes.jpg") in src.bad_files
    assert os.path.join(root, "yak") + os.sep in src.bad_files
    assert src.num_train == 5 * 3 + 3 + 1 + 1 + 1  # jpgs + png/grey/cmyk + bmp + gif + the corrupt one
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True))
    train = defaults.train_dataset(src, image_size=32, batch_size=4, augment="autoaugment", seed=0)
    steps = src.num_train // 4 + 2  # past one full epoch, so every file has been visited
    history = model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert corrupt in src.bad_files and src.bad_reasons[corrupt].startswith("could not be")


def test_folder_converts_greyscale_cmyk_png_bmp_gif_to_rgb(messy_folder):
    root, colours, _ = messy_folder
    src = defaults.get_source(f"folder:{root}", holdout_fraction=0.0)
    paths, labels = src.files("train")
    for name in ("photo.png", "cmyk.jpeg", "bitmap.BMP", "anim.gif"):
        path = next(p for p in paths if p.endswith(name))
        image = data.preprocessing.preprocess_for_eval(tf.io.read_file(path), 24).numpy()
        expected = colours[os.path.basename(os.path.dirname(path))]
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected, atol=4.0)
    grey = data.preprocessing.preprocess_for_eval(
        tf.io.read_file(os.path.join(root, "cat", "grey.jpg")), 24
    ).numpy()
    assert grey.shape == (24, 24, 3)
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)


def test_folder_seeded_split_is_per_class_disjoint_and_reproducible(tmp_path):
    for name, count in (("a", 10), ("b", 20), ("c", 1)):
        (tmp_path / name).mkdir()
        for k in range(count):
            (tmp_path / name / f"{k}.jpg").write_bytes(_solid_jpeg(k, 16))
    src = defaults.get_source(f"folder:{tmp_path}", holdout_fraction=0.2, seed=1)
    train, held = src.files("train"), src.files("eval")
    assert not set(train[0]) & set(held[0])
    assert np.bincount(held[1], minlength=3).tolist() == [2, 4, 0]  # a single image stays in train
    assert (src.num_train, src.num_eval) == (25, 6)
    assert defaults.get_source(f"folder:{tmp_path}", holdout_fraction=0.2, seed=1).files("eval") == held
    assert defaults.get_source(f"folder:{tmp_path}", holdout_fraction=0.2, seed=2).files("eval") != held


def test_more_input_pipelines_than_images_is_a_user_error(tmp_path):
    (tmp_path / "only").mkdir()
    for k in range(3):
        (tmp_path / "only" / f"{k}.jpg").write_bytes(_solid_jpeg(k, 16))
    src = defaults.get_source(f"folder:{tmp_path}", holdout_fraction=0.0)
    with pytest.raises(UserError, match="input pipelines"):
        defaults.train_dataset(
            src, image_size=16, batch_size=1, input_context=tf.distribute.InputContext(4, 0, 4)
        )


def test_folder_with_train_and_val_uses_them(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for name in ("x", "y"):
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(count):
                (tmp_path / split / name / f"{k}.jpg").write_bytes(_solid_jpeg(k, 16))
    src = defaults.get_source(f"folder:{tmp_path}")
    assert (src.num_train, src.num_eval, src.class_names) == (6, 4, ["x", "y"])
    assert all(os.sep + "val" + os.sep in p for p in src.files("eval")[0])


def test_folder_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as error:
        defaults.get_source(f"folder:{tmp_path / 'nope'}")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="no class sub-folders"):
        defaults.get_source(f"folder:{tmp_path}")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="no usable training images"):
        defaults.get_source(f"folder:{tmp_path}")


# ----------------------------------------------------------------------------- TFDS


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        src = defaults.get_source("tfds:cifar10", str(tmp_path))
        assert src.name == "tfds:cifar10" and src.num_classes == 10 and len(src.class_names) == 10
        train = defaults.train_dataset(src, image_size=32, batch_size=4, augment="randaugment", seed=0)
        images, labels = next(iter(train))
        assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 10)
        evaluation = defaults.eval_dataset(src, image_size=24, batch_size=5)
        batches = list(evaluation.as_numpy_iterator())
        assert sum(len(y) for _, y in batches) == 12
        assert all(0 <= label < 10 for _, y in batches for label in y)
        ids = {r["id"] for r in src.records("eval").as_numpy_iterator()}
        assert all(i.startswith(b"tfds:cifar10/") for i in ids) and len(ids) == 12
    assert src.bad_files == []


def test_missing_tfds_dataset_fails_fast_with_one_line(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    started = time.perf_counter()
    with pytest.raises(UserError) as error:
        defaults.get_source("tfds:cifar10", str(tmp_path))
    assert time.perf_counter() - started < 5.0
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and "tfds build cifar10" in message
    with pytest.raises(UserError, match="unknown TFDS dataset"):
        defaults.get_source("tfds:no_such_dataset_anywhere", str(tmp_path))
    with pytest.raises(UserError, match="bad TFDS dataset spec"):
        defaults.get_source("tfds:", str(tmp_path))


def test_missing_tfds_dataset_fails_fast_without_importing_tfds(tmp_path):
    """In a fresh process (TFDS not yet imported) the check does not even import TFDS."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {REPO_ROOT!r})
        from efficientnet_tf import data
        from efficientnet_tf.errors import UserError
        started = time.perf_counter()
        try:
            data.get_source("tfds:imagenette:320px-v2", {str(tmp_path)!r}, holdout_fraction=0.1, seed=0)
        except UserError as error:
            print("ELAPSED", time.perf_counter() - started)
            print("TFDS_IMPORTED", "tensorflow_datasets" in sys.modules)
            print("MESSAGE", error)
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert float(lines["ELAPSED"]) < 5.0, result.stdout + result.stderr
    assert lines["TFDS_IMPORTED"] == "False"
    assert "imagenette/320px-v2 is not prepared under" in lines["MESSAGE"]
