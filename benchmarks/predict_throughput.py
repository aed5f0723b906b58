"""Prediction throughput: `--mode=predict` over a folder of photos for every artifact format, against
what its two stages allow, and keras.applications' model.predict on the same input pipeline.

    python benchmarks/predict_throughput.py --data ../shared/data [--model_dir RUN_DIR] [--limit 1000]
        [--image_size 128] [--batch_size 32] [--formats keras,saved_model,tflite_float32,tflite_int8,onnx,openvino]
        [--out runs/predict_benchmark]

`--data` is a folder of images, or a folder holding `imagenette2-224sq-train.tar` (extracted once under
`--out`). `--limit` takes that many photos spread evenly over the (sorted) folder. The model is the
latest checkpoint of a training run (`--model_dir`; EMA weights when it has them), or, without one, a
random-weight EfficientNet-B0 with one class per subfolder (throughput does not depend on the
weights). It is exported once to each format under `--out` (int8 calibrated on 100 of the photos).

For each format, on this machine:
  decode       images/s of the input pipeline alone (read, decode, eval crop and resize, batches) —
               the same for every format of one model;
  runtime      images/s of the bare runtime on pre-decoded batches (the ceiling of that format);
  bound        1 / (1/decode + 1/runtime): what the two stages allow when they run one after the other;
  predict      images/s of `--mode=predict` (efficientnet_tf.prediction.predict_files, rows written to
               a CSV), after a one-batch warm-up; `ratio` = predict / bound (> 1 where the stages overlap).
Plus `keras.applications.EfficientNetB0(...).predict` on the same tf.data pipeline. Prints a table, the
fastest format, the machine load (`uptime`), and writes `summary.json` under `--out`.
"""

from __future__ import annotations

import argparse
import warnings
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import imagenette  # noqa: E402  (benchmarks/imagenette.py: the Imagenette archive and its extraction)

# "keras" (a .keras file) and any export format of efficientnet_tf.export.registry ("all": every one of them,
# each skipped in one line when its extra is not installed).
DEFAULT_FORMATS = ("keras", "all")
KERAS_FILE = "model.keras"


def photo_folder(data: str, out: str) -> str:
    """The folder of photos: `data` itself, or the archive in it extracted once under `out`."""
    archive = os.path.join(data, imagenette.ARCHIVE_NAME)
    if not os.path.isfile(archive):
        return data
    return imagenette.extract(archive, os.path.join(out, "data"))


def timed_rate(fn, count: int) -> tuple[float, float]:
    """(images/s, seconds) of `fn()` processing `count` images."""
    began = time.perf_counter()
    fn()
    seconds = time.perf_counter() - began
    return count / seconds, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of photos, or folder holding " + imagenette.ARCHIVE_NAME)
    parser.add_argument("--model_dir", default=None, help="training run whose checkpoint is exported")
    parser.add_argument("--image_size", type=int, default=128, help="without --model_dir: the B0's resolution")
    parser.add_argument("--limit", type=int, default=1000, help="photos per measurement (0: all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                        help="keras and export formats (efficientnet_tf.export.registry names or groups: tflite, all)")
    parser.add_argument("--skip_keras_applications", action="store_true")
    parser.add_argument("--out", default=os.path.join("runs", "predict_benchmark"))
    args = parser.parse_args()
    from efficientnet_tf.errors import UserError
    from efficientnet_tf.export import registry

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        exported_formats = list(registry.check([f for f in formats if f != "keras"])) if formats != ["keras"] else []
    except UserError as error:
        parser.error(str(error))
    formats = (["keras"] if "keras" in formats else []) + exported_formats

    import keras
    import numpy as np

    from efficientnet_tf import build_model, export
    from efficientnet_tf import prediction as predictions
    from efficientnet_tf.export.files import LABELS_FILE, write_labels_file
    from efficientnet_tf.run_model import restore_for_inference

    os.makedirs(args.out, exist_ok=True)
    folder = photo_folder(args.data, args.out)
    everything = predictions.expand_inputs([folder])
    step = max(1, len(everything) // args.limit) if args.limit else 1
    files = everything[::step][: args.limit or None]
    classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})
    labels = np.array([classes.index(os.path.basename(os.path.dirname(f))) for f in files])
    print(f"{len(files)} of the {len(everything)} photos in {folder}", flush=True)

    if args.model_dir:
        model, config, names = restore_for_inference(args.model_dir)
        size, method = int(config.model.image_size), str(config.data.resize_method)
        source = f"latest checkpoint of {args.model_dir}"
    else:
        model = build_model("efficientnet-b0", classes=len(classes), resolution=args.image_size,
                            classifier_activation="softmax")
        size, method, names, source = args.image_size, "bicubic", classes, "random weights"
    names = names or classes
    print(f"{model.name} at {size} px ({source}), {method} resize, batch {args.batch_size}", flush=True)

    # Stage 1 alone: decoding and preprocessing, and the decoded images for everything else.
    decoded = []
    dataset = predictions.image_batches(files, size, method, args.batch_size)
    for _ in dataset.take(1):
        pass  # warm-up: thread pools, tracing
    decode_rate, _ = timed_rate(lambda: decoded.extend(images.numpy() for _, images in dataset), len(files))
    images = np.concatenate(decoded)
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    print(f"decode + preprocess alone: {decode_rate:.1f} images/s", flush=True)

    export_dir = os.path.join(args.out, f"export_{size}px")
    wanted = []
    for name in (f for f in formats if f != "keras"):
        missing = registry.get(name).missing_packages()
        if missing:
            print(f"{name} skipped: {', '.join(missing)} not installed ({registry.get(name).install_hint})", flush=True)
            formats.remove(name)
        else:
            wanted.append(name)
    artifacts = {"keras": KERAS_FILE, **{name: registry.get(name).file for name in wanted}}
    if wanted and not all(os.path.exists(os.path.join(export_dir, artifacts[f])) for f in wanted):
        began = time.time()
        export.run_export(model, class_names=list(names), image_size=size, resize_method=method,
                          export_dir=export_dir, formats=wanted, representative_images=images[:100],
                          eval_images=images[:50], eval_labels=labels[:50])
        print(f"exported {', '.join(wanted)} in {time.time() - began:.0f}s", flush=True)
    if "keras" in formats:
        os.makedirs(export_dir, exist_ok=True)
        model.save(os.path.join(export_dir, KERAS_FILE))
        write_labels_file(os.path.join(export_dir, LABELS_FILE), list(names))

    rows = []
    for fmt in formats:
        path = os.path.join(export_dir, artifacts[fmt])
        predictor = predictions.load_predictor(path)
        predictor.predict_images(batches[0])  # warm-up (tracing, allocation)
        runtime_rate, _ = timed_rate(lambda: [predictor.predict_images(b) for b in batches], len(images))
        bound = 1.0 / (1.0 / decode_rate + 1.0 / runtime_rate)
        with tempfile.TemporaryDirectory() as tmp:
            predictions.predict_files(path, files[: args.batch_size], output=os.path.join(tmp, "warm.csv"),
                                      predictor=predictor, progress=False)
            run = predictions.predict_files(path, files, output=os.path.join(tmp, "rows.csv"),
                                            batch_size=args.batch_size, predictor=predictor, progress=False)
        predict_rate = run.images_per_second
        rows.append({"format": fmt, "decode": decode_rate, "runtime": runtime_rate, "bound": bound,
                     "predict": predict_rate, "ratio": predict_rate / bound, "images": len(run.rows)})
        print(f"{fmt:15s} runtime {runtime_rate:7.1f}  bound {bound:7.1f}  predict {predict_rate:7.1f} images/s "
              f"(ratio {predict_rate / bound:.2f})", flush=True)

    baseline = None
    if not args.skip_keras_applications:
        reference = keras.applications.EfficientNetB0(weights=None, classes=len(names),
                                                      input_shape=(size, size, 3))
        pipeline = predictions.image_batches(files, size, method, args.batch_size).map(lambda i, x: x)
        warnings.filterwarnings("ignore", message="Your input ran out of data")  # predict on a finite dataset
        reference.predict(pipeline.take(1), verbose=0)
        baseline, _ = timed_rate(lambda: reference.predict(pipeline, verbose=0), len(files))
        print(f"keras.applications EfficientNetB0 model.predict on the same pipeline: {baseline:.1f} images/s")

    load = os.popen("uptime").read().strip()
    fastest = max(rows, key=lambda r: r["predict"]) if rows else None
    lines = ["| format | decode img/s | bare runtime img/s | bound img/s | --mode=predict img/s | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['format']} | {r['decode']:.1f} | {r['runtime']:.1f} | {r['bound']:.1f} | {r['predict']:.1f} "
              f"| {r['ratio']:.2f} |" for r in rows]
    if baseline is not None:
        lines.append(f"| keras.applications B0 `model.predict` (same pipeline) | | | | {baseline:.1f} | |")
    print("\n".join(lines))
    if fastest:
        print(f"Fastest format: {fastest['format']} ({fastest['predict']:.1f} images/s)")
    print(f"Load: {load}")
    summary = {"photos": len(files), "folder_photos": len(everything), "image_size": size, "resize": method,
               "batch_size": args.batch_size, "model": model.name, "weights": source, "rows": rows,
               "keras_applications_predict": baseline, "fastest": fastest and fastest["format"], "uptime": load,
               "cpus": os.cpu_count()}
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
