"""Training images/second: our EfficientNet-B0 training step vs keras.applications EfficientNetB0.

    python benchmarks/train_throughput.py [--resolutions 64,128,224] [--batch_size 32] [--steps 8]

Same process, same synthetic batch, same batch size and resolution, same optimizer (the
reference RMSProp with the same learning-rate schedule) and loss (label-smoothed cross-entropy
on logits). Ours runs `efficientnet_tf.training.Trainer`'s compiled loop, which also does the L2
weight decay, the EMA update of weights and batch-norm statistics and the top-1 count; Keras
runs `Model.fit` (steps_per_execution = our steps per loop). XLA is off for both on CPU
(`jit_compile=False`; it is ~8x slower there) and on for both on GPU/TPU. The two are measured
alternately, `--repeats` times each, and the best time of each is kept to damp the noise of a
shared machine. Prints images/s per resolution and the ratio ours / keras.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

NUM_CLASSES = 1000


def _config(resolution: int, batch_size: int, steps: int):
    from efficientnet_tf import hparams

    config = hparams.build_config(
        [f"model.image_size={resolution}", f"model.num_classes={NUM_CLASSES}", "train.steps_per_epoch=100",
         "train.warmup_epochs=0", "train.image_summary=false"],
        {"data.dataset": "synthetic", "train.batch_size": batch_size, "train.train_steps": 10 * steps},
    )
    return hparams.resolve(config, num_classes=NUM_CLASSES, num_train=100 * batch_size)


def _batch(resolution: int, batch_size: int):
    import tensorflow as tf

    images = tf.random.stateless_uniform([batch_size, resolution, resolution, 3], [1, 2], 0, 255)
    labels = tf.one_hot(tf.random.stateless_uniform([batch_size], [3, 4], 0, NUM_CLASSES, tf.int32), NUM_CLASSES)
    return images, labels


def measure(resolution: int, batch_size: int, steps: int, warmup: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` images/s for ours and for keras.applications at one resolution."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import training

    info = training.create_strategy("auto")
    config = _config(resolution, batch_size, steps)
    images, labels = _batch(resolution, batch_size)

    def dataset_fn(context=None):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    with tempfile.TemporaryDirectory() as model_dir:
        ours = training.Trainer(config, info, model_dir, train_dataset_fn=dataset_fn)
        steps_per_loop = ours.steps_per_loop
        with info.strategy.scope():
            reference = keras.applications.EfficientNetB0(
                weights=None, input_shape=(resolution, resolution, 3), classes=NUM_CLASSES,
                classifier_activation=None,
            )
            schedule = training.build_schedule(config.train, int(config.train.steps_per_epoch),
                                               int(config.train.train_steps))
            reference.compile(
                optimizer=training.build_optimizer(config.train, schedule),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                jit_compile=ours.jit_compile,
                steps_per_execution=steps_per_loop,
            )
        keras_data = dataset_fn()
        reference.fit(keras_data, epochs=1, steps_per_epoch=max(warmup, steps_per_loop), verbose=0, shuffle=False)

        ours_best = keras_best = float("inf")
        for _ in range(repeats):
            ours_best = min(ours_best, ours.time_steps(steps, warmup_steps=warmup))
            began = time.perf_counter()
            reference.fit(keras_data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
            keras_best = min(keras_best, time.perf_counter() - began)
    images_per_step = steps * batch_size
    return {"ours": images_per_step / ours_best, "keras": images_per_step / keras_best}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="64,128,224", help="comma-separated image sizes")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements per model")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"Training throughput, EfficientNet-B0, batch {args.batch_size}, {args.steps} timed steps, "
          f"best of {args.repeats}, {device} ({os.cpu_count()} cores), TF {tf.__version__}, Keras {keras.__version__}")
    print(f"{'resolution':>10} {'ours img/s':>11} {'keras img/s':>12} {'ratio':>6}")
    for resolution in (int(r) for r in args.resolutions.split(",")):
        result = measure(resolution, args.batch_size, args.steps, args.warmup, args.repeats)
        ratio = result["ours"] / result["keras"]
        print(f"{resolution:>10} {result['ours']:>11.2f} {result['keras']:>12.2f} {ratio:>6.2f}", flush=True)
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
