"""Images/second per CPU core of the training input pipeline on real photos (Imagenette, 224 px).

    python benchmarks/input_pipeline.py [--data ../shared/data | --photos DIR] [--cores 1,2]
                                        [--batches 20] [--windows 3] [--keras]

Extracts `imagenette2-224sq-train.tar` from the shared data folder (default: `../shared/data`
beside the repository) into a temporary directory, or reads already extracted photos from
`--photos` (the folder of class folders), and times the training pipeline of
`data.build_train_dataset` on them:

- decode + Inception crop + flip + resize (no augmentation: all the host does when
  data.augment_on_device moves the policy and mixing into the train step),
- the same + AutoAugment v0,
- the same + RandAugment (N=2, M=10),

and, with `--keras`, a plain Keras 3 pipeline: the same decode and crop followed by
`keras.layers.RandAugment` (num_ops=2, its default factor 0.5) on each batch.

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

ARCHIVE_NAME = "imagenette2-224sq-train.tar"
PIPELINES = (
    ("none", "decode + crop + flip + resize (= augment_on_device)"),
    ("autoaugment", "  + AutoAugment v0"),
    ("randaugment", "  + RandAugment N=2 M=10"),
    ("keras", "decode + crop + keras.layers.RandAugment"),
)
# Per-core targets (images/s): what the host must sustain per core for the pipeline not to be the bottleneck.
TARGETS = {"none": 250.0, "autoaugment": 150.0}


def _time_dataset(dataset, batches: int, warmup: int, windows: int) -> dict[str, list[float]]:
    """Per window of `batches` batches (after `warmup` batches: tracing, autotuning): images per second
    of wall time and per second of this process's CPU time (all threads)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    rates: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(windows):
        images = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(batches):
            images += int(next(iterator)[0].shape[0])
        rates["wall"].append(images / (time.perf_counter() - start))
        rates["cpu"].append(images / (time.process_time() - cpu_start))
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
    results = {}
    for key, _ in PIPELINES:
        if key == "keras":
            if not args.keras:
                continue
            dataset = _keras_randaugment_dataset(src, args.image_size, args.batch_size, args.seed)
        else:
            dataset = data.build_train_dataset(src, augment=key, **common)
        rates = _time_dataset(dataset.with_options(options), args.batches, args.warmup, args.windows)
        results[key] = rates
        print(f"  {cores} core(s), {key}: " + " ".join(f"{r:.1f}" for r in rates["wall"]) + " images/s; "
              + " ".join(f"{r:.1f}" for r in rates["cpu"]) + " images per CPU-second", file=sys.stderr, flush=True)
        del dataset  # its prefetching threads would bill the next pipeline's CPU time
    print(json.dumps({"cores": cores, "num_images": src.num_train, "bad_files": len(src.bad_files),
                      "rates": results}))
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    core_counts = [int(c) for c in args.cores.split(",")]
    if max(core_counts) > available:
        parser.error(f"--cores asks for {max(core_counts)} cores, this process may use {available}")
    with tempfile.TemporaryDirectory(prefix="imagenette_bench_") as tmp:
        started = time.perf_counter()
        photos = _photos(args, tmp)
        if photos is None:
            print(f"SKIP: no photos; pass --data pointing at the folder that holds {ARCHIVE_NAME}, or --photos")
            return 0
        print(f"photos in {photos} ready in {time.perf_counter() - started:.1f}s; {available} CPU cores available")
        runs = {}
        for cores in core_counts:
            command = [sys.executable, os.path.abspath(__file__), "--child", "--photos", photos, "--cores", str(cores),
                       "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
                       "--batches", str(args.batches), "--windows", str(args.windows), "--warmup", str(args.warmup),
                       "--seed", str(args.seed)] + (["--keras"] if args.keras else [])
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            runs[cores] = json.loads(done.stdout.strip().splitlines()[-1])

    first = runs[core_counts[0]]
    print(f"\nTraining input pipeline, {first['num_images']} photos, {args.image_size} px, batch {args.batch_size}, "
          f"median of {args.windows} windows of {args.batches} batches")
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
    print()
    print("\n".join(verdicts))
    if first["bad_files"]:
        print(f"{first['bad_files']} bad files skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
