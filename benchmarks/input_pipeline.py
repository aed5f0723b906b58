"""Images/second of the training input pipeline on real photos (Imagenette, 224 px).

    python benchmarks/input_pipeline.py [--data ../shared/data] [--image_size 224] [--batches 40]

Extracts `imagenette2-224sq-train.tar` from the shared data folder (default: `../shared/data`
beside the repository) into a temporary directory and times, in the same run and on the same
files, the training pipeline of `data.build_train_dataset`:

- decode + Inception crop + flip + resize (no augmentation: all the host does when
  data.augment_on_device moves the policy and mixing into the train step),
- the same + AutoAugment v0,
- the same + RandAugment (N=2, M=10),

and a plain Keras 3 pipeline: the same decode and crop followed by `keras.layers.RandAugment`
(num_ops=2, its default factor 0.5) on each batch. EfficientNet-B0 trains at about 7 images/s
on a 2-core CPU, so the pipeline must deliver at least 4× that (28 images/s) not to hold
training back. Skips with a message (exit 0) when the archive is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

ARCHIVE_NAME = "imagenette2-224sq-train.tar"
B0_TRAIN_IMAGES_PER_SECOND = 7.0
REQUIRED_FACTOR = 4.0


def _time_dataset(dataset, batches: int, warmup: int) -> tuple[float, int]:
    """Images/s over `batches` batches after `warmup` batches (which include tracing)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += int(batch[0].shape[0])
    return images / (time.perf_counter() - start), images


def _keras_randaugment_dataset(src, image_size: int, batch_size: int, seed: int):
    """Our decode + Inception crop, then keras.layers.RandAugment per batch."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import data

    layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, seed=seed)
    paths, labels = src.files("train")
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths), seed=seed).repeat()
    dataset = dataset.map(
        lambda path, label: (
            data.preprocessing.preprocess_for_train(tf.io.read_file(path), image_size),
            label,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda x, y: (layer(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.path.join(REPO_ROOT, "..", "shared", "data"),
        help="folder holding " + ARCHIVE_NAME,
    )
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (tracing, autotuning)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    archive = os.path.join(args.data, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        print(f"SKIP: {archive} not found; pass --data pointing at the folder that holds {ARCHIVE_NAME}")
        return 0

    import tensorflow as tf
    from absl import logging

    from efficientnet_tf import data, hparams

    logging.set_verbosity(logging.WARNING)
    defaults = hparams.default_config().data  # the recipe's augmentation settings
    with tempfile.TemporaryDirectory(prefix="imagenette_bench_") as tmp:
        started = time.perf_counter()
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        train_dir = os.path.join(tmp, "imagenette2-224sq", "train")
        src = data.get_source(f"folder:{train_dir}", None, holdout_fraction=0.0, seed=0)
        print(
            f"{src.num_train} images, {src.num_classes} classes, extracted and scanned in "
            f"{time.perf_counter() - started:.1f}s; {os.cpu_count()} CPU cores; tensorflow {tf.__version__}"
        )
        common = dict(image_size=args.image_size, batch_size=args.batch_size, seed=args.seed, resize_method="bicubic",
                      randaug_num_layers=int(defaults.randaug_num_layers),
                      randaug_magnitude=float(defaults.randaug_magnitude), mixup_alpha=0.0, cutmix_alpha=0.0,
                      min_crop_area=float(defaults.min_crop_area))
        pipelines = [
            (
                "decode + crop + flip + resize (= augment_on_device)",
                lambda: data.build_train_dataset(src, augment="none", **common),
            ),
            ("  + AutoAugment v0", lambda: data.build_train_dataset(src, augment="autoaugment", **common)),
            (
                "  + RandAugment N=2 M=10",
                lambda: data.build_train_dataset(src, augment="randaugment", **common),
            ),
            (
                "Keras 3 keras.layers.RandAugment",
                lambda: _keras_randaugment_dataset(src, args.image_size, args.batch_size, args.seed),
            ),
        ]
        rows = []
        for name, make in pipelines:
            rate, count = _time_dataset(make(), args.batches, args.warmup)
            rows.append((name, rate, count))
            print(f"  measured {name.strip()}: {rate:.1f} images/s", flush=True)

    target = REQUIRED_FACTOR * B0_TRAIN_IMAGES_PER_SECOND
    print()
    print(
        f"Training input pipeline, {args.image_size} px, batch {args.batch_size}, {args.batches} batches each"
    )
    print(f"| pipeline | images/s | ms/image | × B0 training ({B0_TRAIN_IMAGES_PER_SECOND:.0f} img/s) |")
    print("|---|---:|---:|---:|")
    for name, rate, _ in rows:
        print(
            f"| {name.strip()} | {rate:.1f} | {1000.0 / rate:.1f} | {rate / B0_TRAIN_IMAGES_PER_SECOND:.1f} |"
        )
    autoaugment_rate = rows[1][1]
    verdict = "OK" if autoaugment_rate >= target else "TOO SLOW"
    print(f"\nAutoAugment pipeline: {autoaugment_rate:.1f} images/s, required >= {target:.0f}: {verdict}")
    if src.bad_files:
        print(f"{len(src.bad_files)} bad files skipped, e.g. {src.bad_files[0]}")
    return 0 if autoaugment_rate >= target else 1


if __name__ == "__main__":
    sys.exit(main())
