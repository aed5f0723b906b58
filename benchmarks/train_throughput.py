"""Training images/second: our training step against keras.applications', and our models against each other.

    python benchmarks/train_throughput.py [--resolutions 128,224] [--batch_size 32] [--windows 7]
                                          [--steps 3] [--precision float32|mixed_bfloat16]
                                          [--models efficientnet-b0[,efficientnetv2-b0,...]] [--skip_keras]

Same process, same synthetic batch, same batch size and resolution, same optimizer (the
reference RMSProp with the same learning-rate schedule) and loss (label-smoothed cross-entropy
on logits). Ours runs `efficientnet_tf.training.Trainer`'s compiled loop for each of `--models`,
whose step also does the L2 weight decay, the EMA update of weights and batch-norm statistics and
the loss / top-1 sums; Keras runs, for each model keras.applications has (EfficientNetB0-B7,
EfficientNetV2B0-B3/S/M/L), the compiled `Model.train_function` that `Model.fit` calls each step
(loss tracker included, steps_per_execution = our steps per loop). XLA is off for all on CPU
(`jit_compile=False`; it is ~8x slower there) and on for all on GPU/TPU.

All are timed in rotating windows of `--steps` steps (the order rotates every window), `--windows`
windows each, so that a shared machine's load changes hit them alike. Prints every window, the median
images/s of each, and against the baseline (keras.applications' first model, or with `--skip_keras`
our first model): the ratio of the medians, the median of the per-window ratios and, as a check that
another job on the machine did not decide it, the ratio of images per second of process CPU time.
`--models=efficientnet-b0,efficientnetv2-b0 --skip_keras` is EfficientNetV2-B0's train step against
EfficientNet-B0's (the paper's "trains faster", at one image size).
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


def _config(model: str, resolution: int, batch_size: int, steps: int):
    from efficientnet_tf import hparams

    # The synthetic dataset layer trains at one size without augmentation (a V2 variant's progressive stages off).
    config = hparams.build_config(
        [f"model.image_size={resolution}", f"model.num_classes={NUM_CLASSES}", "train.steps_per_epoch=100",
         "train.warmup_epochs=0", "train.image_summary=false"],
        {"model.name": model, "data.dataset": "synthetic", "train.batch_size": batch_size,
         "train.train_steps": 10 * steps},
    )
    return hparams.resolve(config, num_classes=NUM_CLASSES, num_train=100 * batch_size)


def _batch(resolution: int, batch_size: int):
    import tensorflow as tf

    images = tf.random.stateless_uniform([batch_size, resolution, resolution, 3], [1, 2], 0, 255)
    labels = tf.one_hot(tf.random.stateless_uniform([batch_size], [3, 4], 0, NUM_CLASSES, tf.int32), NUM_CLASSES)
    return images, labels


def keras_application(model: str):
    """keras.applications' constructor of one of our model names, or None when it has none."""
    import keras

    from efficientnet_tf.models.scaling import canonical_name

    key = canonical_name(model)
    for prefix, keras_prefix in (("efficientnetv2-", "EfficientNetV2"), ("efficientnet-", "EfficientNet")):
        if key.startswith(prefix):
            return getattr(keras.applications, keras_prefix + key[len(prefix):].upper(), None)
    return None


def measure(resolution: int, batch_size: int, steps: int, windows: int, models: list[str],
            with_keras: bool = True) -> dict[str, list[float]]:
    """Images/s of each participant ("ours <model>", "keras <model>") in `windows` rotating windows of `steps`
    steps; also each one's images per second of process CPU time ("<name> cpu")."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import training

    info = training.create_strategy("auto")
    images, labels = _batch(resolution, batch_size)

    def dataset_fn(context=None, stage=None):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    runners = {}
    with tempfile.TemporaryDirectory() as work:
        for model in models:
            config = _config(model, resolution, batch_size, steps)
            ours = training.Trainer(config, info, os.path.join(work, model), train_dataset_fn=dataset_fn)

            def run_ours(ours=ours) -> int:
                ours.time_steps(steps, warmup_steps=0)
                return steps

            runners[f"ours {model}"] = run_ours
            application = keras_application(model) if with_keras else None
            if application is None:
                continue
            with info.strategy.scope():
                reference = application(weights=None, input_shape=(resolution, resolution, 3), classes=NUM_CLASSES,
                                        classifier_activation=None)
                schedule = training.build_schedule(config)
                reference.compile(
                    optimizer=training.build_optimizer(
                        config.train, schedule,
                        loss_scaling=keras.mixed_precision.global_policy().name == "mixed_float16"),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                    jit_compile=config.runtime.jit_compile,
                    steps_per_execution=config.train.steps_per_loop,
                )
            reference.fit(dataset_fn(), epochs=1, steps_per_epoch=2 * config.train.steps_per_loop, verbose=0, shuffle=False)
            calls, per_call = max(1, steps // config.train.steps_per_loop), config.train.steps_per_loop

            def run_keras(function=reference.make_train_function(),
                          iterator=iter(info.strategy.experimental_distribute_dataset(dataset_fn())),
                          calls=calls, per_call=per_call) -> int:
                for _ in range(calls):
                    logs = function(iterator)
                if isinstance(logs, tf.experimental.Optional):
                    logs = logs.get_value()
                tf.nest.map_structure(lambda t: t.numpy(), logs)  # waits for the steps to finish
                return calls * per_call

            runners[f"keras {model}"] = run_keras

        for run in runners.values():  # traces each, settles the allocators
            run()
        names = list(runners)
        result: dict[str, list[float]] = {key: [] for name in names for key in (name, name + " cpu")}
        for window in range(windows):
            shift = window % len(names)
            for name in names[shift:] + names[:shift]:
                began, cpu_began = time.perf_counter(), time.process_time()
                done = runners[name]() * batch_size
                result[name].append(done / (time.perf_counter() - began))
                result[name + " cpu"].append(done / (time.process_time() - cpu_began))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print every window, the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="128,224", help="comma-separated image sizes")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing window")
    parser.add_argument("--windows", type=int, default=7, help="rotating timing windows per model (at least 5)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS, help="Keras dtype policy of all models")
    parser.add_argument("--models", default="efficientnet-b0", help="comma-separated model names of ours")
    parser.add_argument("--skip_keras", action="store_true", help="time our models only (the baseline is the first)")
    parser.add_argument("--out", default=None, help="also write the results, with the hardware, to this JSON file")
    args = parser.parse_args(argv)
    if args.windows < 5:
        parser.error("--windows must be at least 5")
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    import keras
    import tensorflow as tf

    from efficientnet_tf.models.scaling import get_variant

    for model in models:
        get_variant(model)  # an unknown name fails before anything is built
    if args.skip_keras and len(models) < 2:
        parser.error("--skip_keras needs at least two --models to compare")
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(args.precision)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    machine = hardware.describe()
    print(f"Training throughput, {', '.join(models)}{'' if args.skip_keras else ' and keras.applications'}, "
          f"batch {args.batch_size}, {args.precision}, {args.windows} rotating windows of {args.steps} steps, "
          f"{device} ({os.cpu_count()} cores), TF {tf.__version__}, Keras {keras.__version__}")
    print(hardware.describe_line(machine), flush=True)
    windows = {}
    rows = []
    for resolution in (int(r) for r in args.resolutions.split(",")):
        result = measure(resolution, args.batch_size, args.steps, args.windows, models, not args.skip_keras)
        names = [name for name in result if not name.endswith(" cpu")]
        baseline = next((n for n in names if n.startswith("keras ")), names[0])
        for name in names:
            print(f"{resolution} px windows, {name} img/s: " + " ".join(f"{x:.2f}" for x in result[name]))
        for name in names:
            if name == baseline:
                rows.append((resolution, name, statistics.median(result[name]), baseline, None, None, None, None, None))
                continue
            pairs = [o / k for o, k in zip(result[name], result[baseline])]
            print(f"{resolution} px windows, {name} / {baseline}: " + " ".join(f"{x:.2f}" for x in pairs), flush=True)
            cpu_ratio = statistics.median(result[name + " cpu"]) / statistics.median(result[baseline + " cpu"])
            ratio = statistics.median(result[name]) / statistics.median(result[baseline])
            rows.append((resolution, name, statistics.median(result[name]), baseline, ratio, statistics.median(pairs),
                         min(pairs), max(pairs), cpu_ratio))
        windows[resolution] = result
        keras.backend.clear_session()
    print()
    print("| resolution | model | img/s (median) | against | ratio of medians | median window ratio "
          "| window ratios min–max | ratio per CPU-second |")
    print("|---|---|---|---|---|---|---|---|")
    for resolution, name, median, baseline, ratio, median_pair, low, high, cpu_ratio in rows:
        if ratio is None:
            print(f"| {resolution} | {name} | {median:.2f} | (baseline) | | | | |")
        else:
            print(f"| {resolution} | {name} | {median:.2f} | {baseline} | {ratio:.2f} | {median_pair:.2f} "
                  f"| {low:.2f}–{high:.2f} | {cpu_ratio:.2f} |")
    end_load = hardware.load_average()
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in end_load) if end_load else 'unknown'} "
          "(1/5/15 min; other jobs on the machine slow every model alike, window by window)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"hardware": {**machine, "load_average_at_end": end_load}, "batch_size": args.batch_size,
                       "precision": args.precision, "steps": args.steps, "models": models,
                       "results": [dict(zip(("resolution", "model", "images_per_second", "baseline",
                                             "ratio_of_medians", "median_window_ratio", "min_window_ratio",
                                             "max_window_ratio", "ratio_per_cpu_second"), row)) for row in rows],
                       "windows": windows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
