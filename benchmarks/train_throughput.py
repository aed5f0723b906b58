"""Training images/second: our EfficientNet-B0 training step vs keras.applications EfficientNetB0.

    python benchmarks/train_throughput.py [--resolutions 128,224] [--batch_size 32] [--windows 7]
                                          [--steps 3] [--precision float32|mixed_bfloat16]

Same process, same synthetic batch, same batch size and resolution, same optimizer (the
reference RMSProp with the same learning-rate schedule) and loss (label-smoothed cross-entropy
on logits). Ours runs `efficientnet_tf.training.Trainer`'s compiled loop, whose step also does
the L2 weight decay, the EMA update of weights and batch-norm statistics and the loss / top-1
sums; Keras runs the compiled `Model.train_function` that `Model.fit` calls each step (loss
tracker included, steps_per_execution = our steps per loop). XLA is off for both on CPU
(`jit_compile=False`; it is ~8x slower there) and on for both on GPU/TPU.

The two are timed in alternating windows of `--steps` steps (which one goes first alternates
too), `--windows` windows each, so that a shared machine's load changes hit both alike. Prints
every window, the median images/s of each, the ratio of the medians, the median of the
per-window ratios (ours / keras) and, as a check that another job on the machine did not
decide it, the ratio of images per second of process CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)

NUM_CLASSES = 1000
PRECISIONS = ("float32", "mixed_bfloat16")


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


def measure(resolution: int, batch_size: int, steps: int, windows: int) -> dict[str, list[float]]:
    """Images/s of ours and of keras.applications in `windows` alternating windows of `steps` steps."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import training

    info = training.create_strategy("auto")
    config = _config(resolution, batch_size, steps)
    images, labels = _batch(resolution, batch_size)

    def dataset_fn(context=None, stage=None):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    with tempfile.TemporaryDirectory() as model_dir:
        ours = training.Trainer(config, info, model_dir, train_dataset_fn=dataset_fn)
        with info.strategy.scope():
            reference = keras.applications.EfficientNetB0(
                weights=None, input_shape=(resolution, resolution, 3), classes=NUM_CLASSES,
                classifier_activation=None,
            )
            schedule = training.build_schedule(config)
            reference.compile(
                optimizer=training.build_optimizer(
                    config.train, schedule, loss_scaling=keras.mixed_precision.global_policy().name == "mixed_float16"),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                jit_compile=config.runtime.jit_compile,
                steps_per_execution=config.train.steps_per_loop,
            )
        reference.fit(dataset_fn(), epochs=1, steps_per_epoch=2 * config.train.steps_per_loop, verbose=0, shuffle=False)
        train_function = reference.make_train_function()
        keras_iterator = iter(info.strategy.experimental_distribute_dataset(dataset_fn()))
        keras_calls = max(1, steps // config.train.steps_per_loop)

        def run_ours() -> int:
            ours.time_steps(steps, warmup_steps=0)
            return steps

        def run_keras() -> int:
            for _ in range(keras_calls):
                logs = train_function(keras_iterator)
            if isinstance(logs, tf.experimental.Optional):
                logs = logs.get_value()
            tf.nest.map_structure(lambda t: t.numpy(), logs)  # waits for the steps to finish
            return keras_calls * config.train.steps_per_loop

        run_ours(), run_keras()  # traces both, settles the allocators
        result: dict[str, list[float]] = {"ours": [], "keras": [], "ours_cpu": [], "keras_cpu": []}
        for window in range(windows):
            order = (("ours", run_ours), ("keras", run_keras))
            for name, run in order if window % 2 == 0 else reversed(order):
                began, cpu_began = time.perf_counter(), time.process_time()
                images = run() * batch_size
                result[name].append(images / (time.perf_counter() - began))
                result[name + "_cpu"].append(images / (time.process_time() - cpu_began))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print every window, the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="128,224", help="comma-separated image sizes")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing window")
    parser.add_argument("--windows", type=int, default=7, help="alternating timing windows per model (at least 5)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS, help="Keras dtype policy of both models")
    parser.add_argument("--out", default=None, help="also write the results, with the hardware, to this JSON file")
    args = parser.parse_args(argv)
    if args.windows < 5:
        parser.error("--windows must be at least 5")

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(args.precision)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    machine = hardware.describe()
    print(f"Training throughput, EfficientNet-B0, batch {args.batch_size}, {args.precision}, {args.windows} "
          f"alternating windows of {args.steps} steps, {device} ({os.cpu_count()} cores), TF {tf.__version__}, "
          f"Keras {keras.__version__}")
    print(hardware.describe_line(machine), flush=True)
    windows = {}
    rows = []
    for resolution in (int(r) for r in args.resolutions.split(",")):
        result = measure(resolution, args.batch_size, args.steps, args.windows)
        pairs = [o / k for o, k in zip(result["ours"], result["keras"])]
        ours, ref = statistics.median(result["ours"]), statistics.median(result["keras"])
        print(f"{resolution} px windows, ours img/s:  " + " ".join(f"{x:.2f}" for x in result["ours"]))
        print(f"{resolution} px windows, keras img/s: " + " ".join(f"{x:.2f}" for x in result["keras"]))
        print(f"{resolution} px windows, ours/keras:  " + " ".join(f"{x:.2f}" for x in pairs), flush=True)
        cpu_ratio = statistics.median(result["ours_cpu"]) / statistics.median(result["keras_cpu"])
        rows.append((resolution, ours, ref, ours / ref, statistics.median(pairs), min(pairs), max(pairs), cpu_ratio))
        windows[resolution] = result
        keras.backend.clear_session()
    print()
    print("| resolution | ours img/s (median) | keras img/s (median) | ratio of medians | median window ratio "
          "| window ratios min–max | ratio per CPU-second |")
    print("|---|---|---|---|---|---|---|")
    for resolution, ours, ref, ratio, median_pair, low, high, cpu_ratio in rows:
        print(f"| {resolution} | {ours:.2f} | {ref:.2f} | {ratio:.2f} | {median_pair:.2f} | {low:.2f}–{high:.2f} "
              f"| {cpu_ratio:.2f} |")
    end_load = hardware.load_average()
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in end_load) if end_load else 'unknown'} "
          "(1/5/15 min; other jobs on the machine slow both models alike, window by window)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"hardware": {**machine, "load_average_at_end": end_load}, "batch_size": args.batch_size,
                       "precision": args.precision, "steps": args.steps,
                       "results": [dict(zip(("resolution", "ours_images_per_second", "keras_images_per_second",
                                             "ratio_of_medians", "median_window_ratio", "min_window_ratio",
                                             "max_window_ratio", "ratio_per_cpu_second"), row)) for row in rows],
                       "windows": windows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
