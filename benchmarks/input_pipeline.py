"""Images/second per CPU core of the training input pipeline on real photos (Imagenette, 224 px).

    python benchmarks/input_pipeline.py [--data ../shared/data | --photos DIR] [--cores 1,2]
                                        [--batches 20] [--windows 3] [--keras] [--keras_cv]

Extracts `imagenette2-224sq-train.tar` from the shared data folder (default: `../shared/data`
beside the repository) into a temporary directory, or reads already extracted photos from
`--photos` (the folder of class folders), and times the training pipeline of
`data.build_train_dataset` on them:

- decode + Inception crop + flip + resize (no augmentation: all the host does when
  data.augment_on_device moves the policy and mixing into the train step),
- the same + AutoAugment v0,
- the same + RandAugment (N=2, M=10),

and, with `--keras`, a plain Keras 3 pipeline: the same decode and crop followed by
`keras.layers.RandAugment` (num_ops=2, its default factor 0.5) on each batch; with `--keras_cv`
(the `[keras-cv]` extra), the same decode + crop followed by keras-cv on each batch:
`data.augment_backend=keras_cv` (keras_cv.layers.RandAugment, N=2 and M=10 mapped as
data/augment_keras_cv.py says) and `keras_cv.layers.AugMix` (its defaults).

The pipelines take turns: each of `--windows` rounds times one window of every pipeline in
order, each window on a fresh iterator after `--warmup` untimed batches (so an idle pipeline's
prefetching does not run during another's window), and a ratio to our RandAugment is taken
within each round; on a shared machine, load moves all pipelines of a round alike.

Each core count runs in a fresh process (TensorFlow's thread pools are sized once per process)
with TensorFlow's inter- and intra-op pools and the tf.data private thread pool
(`threading.private_threadpool_size`, which bounds the autotuned parallel maps) set to that
many threads and `threading.max_intra_op_parallelism = 1`; the process is also pinned to that
many CPUs (`os.sched_setaffinity`), since the interleave that guards each element against bad
files starts threads of its own. Prints the median over
`--windows` windows of `--batches` batches of images/s, images/s per core, and images per
second of the process's CPU time (all threads), which another job on a shared machine does
not lower the way it lowers wall-clock rates. Skips with a message (exit 0) when there are no
photos.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)

ARCHIVE_NAME = "imagenette2-224sq-train.tar"
PIPELINES = (
    ("none", "decode + crop + flip + resize (= augment_on_device)"),
    ("autoaugment", "  + AutoAugment v0"),
    ("randaugment", "  + RandAugment N=2 M=10"),
    ("keras", "decode + crop + keras.layers.RandAugment"),
    ("keras_cv", "decode + crop + keras-cv RandAugment N=2 M=10"),
    ("keras_cv_augmix", "decode + crop + keras-cv AugMix"),
)
BASELINE = "randaugment"  # ratios are to our RandAugment, within each round
# Per-core targets (images/s): what the host must sustain per core for the pipeline not to be the bottleneck.
TARGETS = {"none": 250.0, "autoaugment": 150.0}


def _time_window(dataset, batches: int, warmup: int) -> tuple[float, float]:
    """One window of `batches` batches on a fresh iterator, after `warmup` batches (autotuning): images per
    second of wall time and per second of this process's CPU time (all threads)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images += int(next(iterator)[0].shape[0])
    rates = images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)
    del iterator  # stops its prefetching threads before the next pipeline's window
    return rates


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


def _keras_cv_augmix_dataset(src, common: dict):
    """Our decode + Inception crop + flip + resize, then keras_cv.layers.AugMix (its defaults) per batch."""
    # Imported here: keras-cv is an optional extra (`--keras_cv`).
    import keras_cv
    import tensorflow as tf

    from efficientnet_tf import data

    layer = keras_cv.layers.AugMix(value_range=(0, 255), seed=common["seed"])
    dataset = data.build_train_dataset(src, augment="none", **common)
    return dataset.map(lambda x, y: (layer(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)


def _child(args: argparse.Namespace) -> int:
    """Measure every pipeline with `args.cores` cores; print one JSON line of {pipeline: [rates]}."""
    cores = int(args.cores)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import tensorflow as tf
    from absl import logging

    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(cores)
    from efficientnet_tf import data, hparams

    logging.set_verbosity(logging.WARNING)
    defaults = hparams.default_config().data  # the recipe's augmentation settings
    src = data.get_source(f"folder:{args.photos}", None, holdout_fraction=0.0, seed=0)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    common = dict(image_size=args.image_size, batch_size=args.batch_size, seed=args.seed, resize_method="bicubic",
                  randaug_num_layers=int(defaults.randaug_num_layers),
                  randaug_magnitude=float(defaults.randaug_magnitude), mixup_alpha=0.0, cutmix_alpha=0.0,
                  min_crop_area=float(defaults.min_crop_area))
    datasets = {}
    for key, _ in PIPELINES:
        if key == "keras":
            if not args.keras:
                continue
            dataset = _keras_randaugment_dataset(src, args.image_size, args.batch_size, args.seed)
        elif key == "keras_cv":
            if not args.keras_cv:
                continue
            dataset = data.build_train_dataset(src, augment="randaugment", augment_backend="keras_cv", **common)
        elif key == "keras_cv_augmix":
            if not args.keras_cv:
                continue
            dataset = _keras_cv_augmix_dataset(src, common)
        else:
            dataset = data.build_train_dataset(src, augment=key, **common)
        datasets[key] = dataset.with_options(options)
    results = {key: {"wall": [], "cpu": []} for key in datasets}
    load = [os.getloadavg()[0]]
    for window in range(args.windows):  # the pipelines take turns, one window each per round
        for key, dataset in datasets.items():
            wall, cpu = _time_window(dataset, args.batches, args.warmup)
            results[key]["wall"].append(wall)
            results[key]["cpu"].append(cpu)
            print(f"  {cores} core(s), round {window + 1}, {key}: {wall:.1f} images/s, {cpu:.1f} images per "
                  "CPU-second", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
    print(json.dumps({"cores": cores, "num_images": src.num_train, "bad_files": len(src.bad_files),
                      "rates": results, "load": load}))
    return 0


def _photos(args: argparse.Namespace, tmp: str) -> str | None:
    """The folder of class folders to read: --photos, or the archive extracted into `tmp`."""
    if args.photos:
        return args.photos if os.path.isdir(args.photos) else None
    archive = os.path.join(args.data, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    return os.path.join(tmp, "imagenette2-224sq", "train")


def _print_ratios(runs: dict, core_counts: list[int]) -> None:
    """Each pipeline's rate over our RandAugment's in the same round (median over rounds)."""
    rates = runs[core_counts[0]]["rates"]
    if BASELINE not in rates or len(rates) < 2:
        return
    print(f"\nRatio to {dict(PIPELINES)[BASELINE].strip()} in the same round (median over rounds)")
    header = "".join(f" {c} core{'s' if c > 1 else ''}: img/s ratio | per CPU-s ratio |" for c in core_counts)
    print(f"| pipeline |{header}")
    print("|---|" + "---:|---:|" * len(core_counts))
    for key, name in PIPELINES:
        if key not in rates or key == BASELINE:
            continue
        cells = []
        for cores in core_counts:
            measured = runs[cores]["rates"]
            ratios = [statistics.median(a / b for a, b in zip(measured[key][kind], measured[BASELINE][kind]))
                      for kind in ("wall", "cpu")]
            cells.append(f" {ratios[0]:.2f} | {ratios[1]:.2f} |")
        print(f"| {name.strip()} |{''.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    """Run one process per core count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data"),
                        help="folder holding " + ARCHIVE_NAME)
    parser.add_argument("--photos", default=None, help="already extracted photos (a folder of class folders)")
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts (one process each)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="batches per timing window")
    parser.add_argument("--windows", type=int, default=3, help="timing windows per pipeline (the median is kept)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first (tracing, autotuning)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keras", action="store_true", help="also time keras.layers.RandAugment")
    parser.add_argument("--keras_cv", action="store_true",
                        help="also time keras-cv's RandAugment (data.augment_backend=keras_cv) and AugMix")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    core_counts = [int(c) for c in args.cores.split(",")]
    if max(core_counts) > available:
        parser.error(f"--cores asks for {max(core_counts)} cores, this process may use {available}")
    if args.keras_cv and importlib.util.find_spec("keras_cv") is None:
        parser.error("--keras_cv needs keras-cv, which is not installed: pip install -e '.[keras-cv]'")
    with tempfile.TemporaryDirectory(prefix="imagenette_bench_") as tmp:
        started = time.perf_counter()
        photos = _photos(args, tmp)
        if photos is None:
            print(f"SKIP: no photos; pass --data pointing at the folder that holds {ARCHIVE_NAME}, or --photos")
            return 0
        print(f"photos in {photos} ready in {time.perf_counter() - started:.1f}s; {available} CPU cores available")
        print(hardware.describe_line(), flush=True)
        runs = {}
        for cores in core_counts:
            command = [sys.executable, os.path.abspath(__file__), "--child", "--photos", photos, "--cores", str(cores),
                       "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
                       "--batches", str(args.batches), "--windows", str(args.windows), "--warmup", str(args.warmup),
                       "--seed", str(args.seed)] + (["--keras"] if args.keras else []) \
                + (["--keras_cv"] if args.keras_cv else [])
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            runs[cores] = json.loads(done.stdout.strip().splitlines()[-1])

    first = runs[core_counts[0]]
    print(f"\nTraining input pipeline, {first['num_images']} photos, {args.image_size} px, batch {args.batch_size}, "
          f"median of {args.windows} rounds of one {args.batches}-batch window per pipeline")
    header = "".join(f" {c} core{'s' if c > 1 else ''}: img/s | per core | per CPU-s |" for c in core_counts)
    print(f"| pipeline |{header} target per core |")
    print("|---|" + "---:|---:|---:|" * len(core_counts) + "---:|")
    verdicts = []
    for key, name in PIPELINES:
        if key not in first["rates"]:
            continue
        cells, per_core, per_cpu_second = [], [], []
        for cores in core_counts:
            rate = statistics.median(runs[cores]["rates"][key]["wall"])
            cpu_rate = statistics.median(runs[cores]["rates"][key]["cpu"])
            per_core.append(rate / cores)
            per_cpu_second.append(cpu_rate)
            cells.append(f" {rate:.1f} | {rate / cores:.1f} | {cpu_rate:.1f} |")
        target = TARGETS.get(key)
        print(f"| {name.strip()} |{''.join(cells)} {f'{target:.0f}' if target else '–'} |")
        if target:
            worst = min(min(per_core), min(per_cpu_second))
            verdicts.append(f"{name.strip()}: worst {min(per_core):.1f} img/s per core, {min(per_cpu_second):.1f} "
                            f"per CPU-second; target {target:.0f}: " + ("OK" if worst >= target else "NOT REACHED"))
    _print_ratios(runs, core_counts)
    print("load average (1 min) at the start and after each round: " + "; ".join(
        f"{c} core{'s' if c > 1 else ''}: " + " ".join(f"{x:.2f}" for x in runs[c]["load"]) for c in core_counts))
    print()
    print("\n".join(verdicts))
    if first["bad_files"]:
        print(f"{first['bad_files']} bad files skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
