"""Export fidelity: every export format of EfficientNet-B0 and -lite0 against the Keras model.

    python benchmarks/export.py [--models efficientnet-b0,efficientnet-lite0] [--data ../shared/data]
        [--image_size 128] [--epochs 2] [--model_dir RUN_DIR] [--out runs/export_benchmark]

For each model: train it briefly from random weights with a plain Keras `fit` (Adam, cosine decay,
label smoothing, no augmentation) on Imagenette — the shared 224 px train archive when present
(`imagenette2-224sq-train.tar` in `--data`, extracted under `--out`, with the data package's seeded
10 % hold-out per class), else the embedded `imagenette_mini` (train/ and val/) — or restore a
trained run with `--model_dir` (the trainer's checkpoints, EMA weights; train it on the same
archive, whose seeded hold-out is then unseen, for an honest accuracy). Then `export.run_export`
writes the SavedModel and the four TFLite files (int8 calibrated on `--calibration_images`
training images through eval preprocessing) and verifies each on the hold-out images: size, top-1
agreement with Keras, accuracy, max probability difference and latency per image (LiteRT, 2
threads). Prints one table per model and writes `summary.json` and `summary.md` under `--out`.
Lite variants resize bilinearly, the others bicubically, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)

ARCHIVE_NAME = "imagenette2-224sq-train.tar"
EXTRACTED_NAME = "imagenette2-224sq"


def _source(data_dir: str, out_dir: str):
    """The Imagenette source: the shared archive (extracted once) or the embedded subset."""
    from efficientnet_tf import data

    archive = os.path.join(data_dir, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        print(f"{archive} not found: using the embedded imagenette_mini", flush=True)
        return (data.get_source("imagenette_mini", None, holdout_fraction=0.0, seed=0),
                "imagenette_mini (embedded: 800 train / 200 val, 128 px)")
    root = os.path.join(out_dir, EXTRACTED_NAME)
    if not os.path.isdir(os.path.join(root, "train")):
        started = time.time()
        with tarfile.open(archive) as tar:
            tar.extractall(out_dir, filter="data")
        print(f"extracted {archive} in {time.time() - started:.0f}s", flush=True)
    source = data.get_source(f"folder:{os.path.join(root, 'train')}", None, holdout_fraction=0.1, seed=0)
    return source, f"Imagenette 224sq train archive, seeded 10% hold-out per class ({source.num_eval} images)"


def _train(model_name: str, src, image_size: int, epochs: float, batch_size: int, seed: int):
    """A model trained briefly with a plain Keras fit; returns (model, seconds)."""
    import keras

    from efficientnet_tf import data
    from efficientnet_tf import build_model, get_variant

    keras.utils.set_random_seed(seed)
    variant = get_variant(model_name)
    model = build_model(model_name, classes=src.num_classes, resolution=image_size)
    steps_per_epoch = max(1, src.num_train // batch_size)
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total_steps, alpha=0.0, warmup_target=2e-3, warmup_steps=max(1, total_steps // 20)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    train = data.build_train_dataset(
        src, image_size=image_size, batch_size=batch_size, resize_method=variant.resize_method, augment="none",
        randaug_num_layers=0, randaug_magnitude=0, mixup_alpha=0.0, cutmix_alpha=0.0, min_crop_area=0.08, seed=seed,
    )
    started = time.time()
    model.fit(train, epochs=1, steps_per_epoch=total_steps, verbose=2)
    return model, time.time() - started


def _eval_arrays(src, image_size: int, resize_method: str, max_images: int | None):
    """Hold-out images (float 0..255), labels and the encoded bytes of the first files."""
    import numpy as np

    from efficientnet_tf import data

    images, labels = [], []
    for batch_images, batch_labels in data.build_eval_dataset(
        src, image_size=image_size, batch_size=64, resize_method=resize_method
    ):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    if max_images and max_images < len(images):
        keep = np.linspace(0, len(images) - 1, max_images).round().astype(int)  # every class, not the first few
        images, labels = images[keep], labels[keep]
    paths = src.files("eval")[0][:64] if hasattr(src, "files") else []
    encoded = []
    for path in paths:
        with open(path, "rb") as handle:
            encoded.append(handle.read())
    return images, labels, encoded


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="efficientnet-b0,efficientnet-lite0")
    parser.add_argument(
        "--data", default=os.path.join(REPO_ROOT, "..", "shared", "data"), help="folder holding " + ARCHIVE_NAME
    )
    parser.add_argument("--image_size", type=int, default=128, help="training and export resolution")
    parser.add_argument("--epochs", type=float, default=2.0, help="brief training, in epochs of the train split")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--model_dir", default=None, help="a trained run to export instead of training (one model)")
    parser.add_argument("--reuse", action="store_true", help="reuse models trained by an earlier run under --out")
    parser.add_argument("--calibration_images", type=int, default=200, help="representative images for int8")
    parser.add_argument("--max_eval_images", type=int, default=None, help="cap the hold-out images verified")
    parser.add_argument("--int8_io", default="uint8", choices=("uint8", "int8"))
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "export_benchmark"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import keras
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf import data
    from efficientnet_tf import export, prediction
    from efficientnet_tf.export import checks
    from efficientnet_tf import get_variant
    from efficientnet_tf.errors import UserError

    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    machine = hardware.describe()
    print(hardware.describe_line(machine), flush=True)
    src, data_note = _source(args.data, args.out)
    print(f"data: {data_note}", flush=True)

    summary = {"command": "python benchmarks/export.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "data": data_note, "hardware": machine, "results": []}  # fmt: skip
    if args.model_dir:
        from efficientnet_tf import run_model

        model, config, class_names = run_model.restore_for_inference(args.model_dir)
        resize = str(config.data.resize_method)
        jobs = [(model.name, model, class_names or src.class_names, resize)]
    else:
        jobs = [(name.strip(), None, src.class_names, None) for name in args.models.split(",") if name.strip()]

    for name, model, class_names, resize in jobs:
        train_seconds = None
        model_out = os.path.join(args.out, name.replace("_", "-"))
        saved = os.path.join(model_out, "trained.keras")
        if model is None and args.reuse and os.path.isfile(saved):
            model = prediction.load_keras_file(saved)
            print(f"{name}: reusing {saved}", flush=True)
        elif model is None:
            print(f"{name}: training {args.epochs:g} epoch(s) at {args.image_size} px ...", flush=True)
            model, train_seconds = _train(name, src, args.image_size, args.epochs, args.batch_size, args.seed)
            os.makedirs(model_out, exist_ok=True)
            model.save(saved)
        image_size = checks.model_image_size(model) or args.image_size
        try:
            resize_method = resize or get_variant(name).resize_method
        except UserError:  # a restored model named outside the variant table
            resize_method = prediction.resize_method_for(model)
        # tf.data's seeded shuffles also depend on the global seed: fix it so that the calibration
        # sample is the same whether the model was trained in this process or reused.
        keras.utils.set_random_seed(args.seed)
        images, labels, encoded = _eval_arrays(src, image_size, resize_method, args.max_eval_images)
        calibration = data.sample_images(src, args.calibration_images, image_size, resize_method).numpy()
        export_started = time.time()
        report = export.run_export(
            model,
            class_names=list(class_names),
            image_size=image_size,
            resize_method=resize_method,
            export_dir=os.path.join(model_out, "export"),
            representative_images=calibration,
            eval_images=images,
            eval_labels=labels,
            eval_jpeg_bytes=encoded or None,
            int8_io=args.int8_io,
        )
        table = export.format_report(report)
        print(table, flush=True)
        summary["results"].append(
            {"model": name, "train_seconds": train_seconds, "export_and_verify_seconds": time.time() - export_started,
             "table": table, "report": report}
        )  # fmt: skip

    summary["total_seconds"] = time.time() - started
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(f"`{summary['command']}`\n\nData: {data_note}\n\n")
        for result in summary["results"]:
            handle.write("```\n" + result["table"] + "\n```\n\n")
    summary_path = os.path.join(args.out, "summary.md")
    print(f"total {summary['total_seconds'] / 60:.1f} min; summary in {summary_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
