"""The accelerator check: one command that says what this project does on the GPU at hand.

    python benchmarks/accelerator_check.py [--out accelerator_check.json] [--budget_seconds 480]
    python benchmarks/accelerator_check.py --quick      # every part at toy size, on a CPU, in about a minute

Parts, in order, each a section of the printed table and of the JSON:

1. hardware: CPU, GPU name, driver, CUDA / cuDNN as TensorFlow sees them, versions (benchmarks/hardware.py).
2. throughput: EfficientNet-B0 at 224 px, training images/s of ours (`training.Trainer`'s compiled loop)
   and of keras.applications EfficientNetB0 (`Model.fit`'s train function), timed in alternating windows
   (which one goes first alternates too) at the largest batch among 256 / 128 / 64 that fits, for float32
   and mixed_float16, XLA off and on. The ratio is of the medians.
3. input: the host input pipeline's images/s (decode, crop, flip, resize of the embedded photos) with
   AutoAugment on the host and without it (`data.augment_on_device=true`, the step augments), against
   what the training step consumes; and the share of step time the trainer waited for input in each case.
4. training: 300 steps on the embedded photos (`imagenette_mini`), whose training loss must fall, then
   the export of the run (SavedModel and float32 TFLite, each verified against the Keras model).

On one GPU the full form stays within `--budget_seconds` (480 s by default): a part that would start after
the budget is spent is skipped and says so. Exit status 1 when the training loss did not fall or an
export failed. `--quick` uses a tiny EfficientNet (width and depth 0.25; keras.applications' own builder for its
side) at 32 px, batch 8 and a few steps for every part, XLA off unless `--xla` says otherwise (XLA compiles even the tiny model for about a minute
on a CPU; tests/test_accelerator_paths.py covers the XLA paths there), and keeps the exit status at 0 for
the loss direction (a few toy steps are noise).
"""

from __future__ import annotations

import argparse
import gc
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

import hardware  # noqa: E402  (benchmarks/hardware.py)

BATCHES = (256, 128, 64)
PRECISIONS = ("float32", "mixed_float16")
NUM_CLASSES = 1000
TOY = {"width": 0.25, "depth": 0.25, "size": 32, "batch": 8}


def _model_overrides(quick: bool) -> list[str]:
    if quick:
        return [f"model.width_coefficient={TOY['width']},model.depth_coefficient={TOY['depth']},"
                f"model.image_size={TOY['size']}"]
    return ["model.image_size=224"]


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "OOM" in text or "out of memory" in text.lower()


def _release() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


# ---------------------------------------------------------------------------------------------
# 2. Throughput, ours vs keras.applications


def _throughput_cell(info, quick: bool, batch: int, jit: bool, steps: int, windows: int) -> dict:
    """Images/s of ours and keras.applications in alternating windows, at the current dtype policy."""
    import keras
    import tensorflow as tf
    # keras.applications' width / depth-scaled builder, behind EfficientNetB0 (not exported publicly): --quick's toy.
    from keras.src.applications.efficientnet import EfficientNet as KerasEfficientNet

    from efficientnet_tf import hparams, training

    size = TOY["size"] if quick else 224
    config = hparams.resolve(hparams.build_config(
        [*_model_overrides(quick), f"model.num_classes={NUM_CLASSES}", "train.steps_per_epoch=1000",
         "train.warmup_epochs=0,train.image_summary=false", f"runtime.jit_compile={str(jit).lower()}",
         f"train.steps_per_loop={steps}", f"runtime.mixed_precision={keras.mixed_precision.global_policy().name}"],
        {"data.dataset": "synthetic", "train.batch_size": batch, "train.train_steps": 100 * steps}),
        num_classes=NUM_CLASSES, num_train=1000 * batch, device_type=info.device_type, num_replicas=info.num_replicas)
    images = tf.random.stateless_uniform([batch, size, size, 3], [1, 2], 0, 255)
    labels = tf.one_hot(tf.random.stateless_uniform([batch], [3, 4], 0, NUM_CLASSES, tf.int32), NUM_CLASSES)

    def dataset_fn(context=None, stage=None):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    policy = keras.mixed_precision.global_policy().name
    with tempfile.TemporaryDirectory() as model_dir:
        ours = training.Trainer(config, info, model_dir, train_dataset_fn=dataset_fn)
        with info.strategy.scope():
            if quick:
                reference = KerasEfficientNet(TOY["width"], TOY["depth"], size, weights=None, input_shape=(size, size, 3),
                                              classes=NUM_CLASSES, classifier_activation=None)
            else:
                reference = keras.applications.EfficientNetB0(
                    weights=None, input_shape=(size, size, 3), classes=NUM_CLASSES, classifier_activation=None)
            schedule = training.build_schedule(config)
            reference.compile(
                optimizer=training.build_optimizer(config.train, schedule, loss_scaling=policy == "mixed_float16"),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                jit_compile=jit, steps_per_execution=steps)
        reference.fit(dataset_fn(), epochs=1, steps_per_epoch=2 * steps, verbose=0, shuffle=False)
        train_function = reference.make_train_function()
        keras_iterator = iter(info.strategy.experimental_distribute_dataset(dataset_fn()))

        def run_ours() -> None:
            ours.time_steps(steps, warmup_steps=0)

        def run_keras() -> None:
            logs = train_function(keras_iterator)
            if isinstance(logs, tf.experimental.Optional):
                logs = logs.get_value()
            tf.nest.map_structure(lambda t: t.numpy(), logs)  # waits for the steps to finish

        began = time.perf_counter()
        ours.time_steps(steps, warmup_steps=steps)  # traces (and compiles) both
        run_keras()
        warmup = time.perf_counter() - began
        rates: dict[str, list[float]] = {"ours": [], "keras": []}
        for window in range(windows):
            order = (("ours", run_ours), ("keras", run_keras))
            for name, run in order if window % 2 == 0 else reversed(order):
                began = time.perf_counter()
                run()
                rates[name].append(steps * batch / (time.perf_counter() - began))
        del ours, reference, train_function, keras_iterator
    _release()
    ours_rate, keras_rate = statistics.median(rates["ours"]), statistics.median(rates["keras"])
    return {"precision": policy, "xla": jit, "batch": batch, "ours_images_per_second": round(ours_rate, 2),
            "keras_images_per_second": round(keras_rate, 2), "ratio": round(ours_rate / keras_rate, 3),
            "windows": rates, "warmup_seconds": round(warmup, 1)}


def _largest_batch(info, quick: bool, jit: bool, steps: int) -> tuple[int, list[str]]:
    """The largest of BATCHES whose training step fits (ours, 1 window); the batches that did not fit."""
    if quick:
        return TOY["batch"], []
    failed = []
    for batch in BATCHES:
        try:
            _throughput_cell(info, quick, batch, jit, steps, windows=1)
            return batch, failed
        except Exception as error:  # noqa: BLE001 - out of memory surfaces as several TF error types
            if not _is_out_of_memory(error):
                raise
            failed.append(f"{batch}: out of memory")
            _release()
    raise RuntimeError(f"none of the batch sizes {BATCHES} fits: {failed}")


# ---------------------------------------------------------------------------------------------
# 3. Input pipeline vs the step


def _input_cell(info, quick: bool, batch: int, on_device: bool, steps: int) -> dict:
    """Host pipeline images/s alone, then the trainer on it: images/s and the share of time it waited."""
    import tensorflow as tf

    from efficientnet_tf import app, training

    config = app.layered_config(
        [*_model_overrides(quick), "data.augment=autoaugment", f"data.augment_on_device={str(on_device).lower()}",
         "train.warmup_epochs=0,train.image_summary=false", f"train.steps_per_loop={steps}"],
        {"data.dataset": "imagenette_mini", "train.batch_size": batch, "train.train_steps": 100 * steps})
    source = app.load_source(config)
    config = app.resolve_training_config(config, info, source)
    train_fn = training.inputs.train_dataset_fn(config, source)
    iterator = iter(train_fn(tf.distribute.InputContext(), config.derived.stages[0]))
    for _ in range(2):
        next(iterator)
    count = max(steps, 4)
    began = time.perf_counter()
    for _ in range(count):
        next(iterator)[0].numpy()
    host_rate = count * batch / (time.perf_counter() - began)
    del iterator
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = training.Trainer(config, info, model_dir, train_dataset_fn=train_fn)
        seconds = trainer.time_steps(2 * steps, warmup_steps=steps)
        waited = trainer.last_input_wait_seconds
        del trainer
    _release()
    return {"augment": "autoaugment on the device" if on_device else "autoaugment on the host", "batch": batch,
            "host_pipeline_images_per_second": round(host_rate, 1),
            "training_images_per_second": round(2 * steps * batch / seconds, 1),
            "input_wait_fraction": round(min(1.0, waited / seconds), 3)}


# ---------------------------------------------------------------------------------------------
# 4. Training on the embedded photos, then export


def _losses(model_dir: str) -> list[tuple[int, float]]:
    import tensorflow as tf

    logs = os.path.join(model_dir, "logs", "train")
    found = []
    for name in sorted(os.listdir(logs)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logs, name)):
            for value in event.summary.value:
                if value.tag == "loss":
                    found.append((int(event.step), float(tf.make_ndarray(value.tensor))))
    return sorted(found)


def _training_run(quick: bool, batch: int, steps: int, formats: list[str]) -> dict:
    from efficientnet_tf import app

    log_every = max(1, steps // 10)
    config = app.layered_config(
        [*_model_overrides(quick), "train.warmup_epochs=0.2,train.image_summary=false,train.ema_decay=0.99",
         f"train.log_every_steps={log_every}", f"train.checkpoint_every_steps={steps}"],
        {"data.dataset": "imagenette_mini", "train.batch_size": batch, "train.train_steps": steps,
         "export.formats": list(formats), "export.calibration_images": 8, "export.eval_images": 32})
    with tempfile.TemporaryDirectory() as model_dir:
        began = time.perf_counter()
        outcome = app.train(config, model_dir=model_dir, evaluate=False)  # the export verifies the model
        train_seconds = time.perf_counter() - began
        losses = _losses(model_dir)
        began = time.perf_counter()
        exported = app.export(app.run_config(model_dir), model_dir, export_dir=os.path.join(model_dir, "export"))
        export_seconds = time.perf_counter() - began
    _release()
    first, last = losses[0][1], losses[-1][1]
    return {"steps": steps, "batch": batch, "first_window_loss": round(first, 4), "last_window_loss": round(last, 4),
            "loss_fell": last < first, "final_step": outcome.result.step, "train_seconds": round(train_seconds, 1),
            "export_seconds": round(export_seconds, 1),
            "artifacts": [{"format": a["format"], "passed": a.get("passed"), "top1_agreement": a.get("top1_agreement")}
                          for a in exported.report["artifacts"]],
            "export_passed": all(a.get("passed") for a in exported.report["artifacts"]
                                 if a["format"] in ("keras", *formats))}


# ---------------------------------------------------------------------------------------------


def _table(result: dict) -> str:
    lines = [hardware.describe_line(result["hardware"]), "",
             "| part | setting | ours img/s | keras.applications img/s | ours / keras |", "|---|---|---|---|---|"]
    for cell in result["throughput"]:
        if "skipped" in cell:
            lines.append(f"| throughput | {cell['setting']} | skipped: {cell['skipped']} | | |")
            continue
        setting = f"{cell['precision']}, XLA {'on' if cell['xla'] else 'off'}, batch {cell['batch']}"
        lines.append(f"| throughput | {setting} | {cell['ours_images_per_second']:.1f} | "
                     f"{cell['keras_images_per_second']:.1f} | {cell['ratio']:.2f} |")
    lines += ["", "| part | setting | host pipeline img/s | training img/s | input wait |", "|---|---|---|---|---|"]
    for cell in result["input"]:
        if "skipped" in cell:
            lines.append(f"| input | {cell['setting']} | skipped: {cell['skipped']} | | |")
            continue
        lines.append(f"| input | {cell['augment']}, batch {cell['batch']} | {cell['host_pipeline_images_per_second']:.1f}"
                     f" | {cell['training_images_per_second']:.1f} | {100 * cell['input_wait_fraction']:.0f}% |")
    run = result.get("training")
    if run and "skipped" not in run:
        exports = ", ".join(f"{a['format']} {'passed' if a['passed'] else 'FAILED'}" for a in run["artifacts"])
        lines += ["", f"training: {run['steps']} steps, batch {run['batch']}: loss {run['first_window_loss']:.3f} -> "
                      f"{run['last_window_loss']:.3f} ({'fell' if run['loss_fell'] else 'DID NOT FALL'}), "
                      f"{run['train_seconds']:.0f} s; export: {exports}"]
    elif run:
        lines += ["", f"training: skipped: {run['skipped']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part at toy size (a CPU check of the script)")
    parser.add_argument("--out", default="accelerator_check.json", help="where to write the JSON results")
    parser.add_argument("--budget_seconds", type=float, default=480.0, help="skip parts that would start later")
    parser.add_argument("--xla", default=None, help="comma-separated off,on (default: off,on; --quick: off)")
    parser.add_argument("--windows", type=int, default=None, help="alternating windows per model (5; --quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps per window and per call (20; --quick 2)")
    parser.add_argument("--train_steps", type=int, default=None, help="training-run steps (300; --quick 12)")
    args = parser.parse_args(argv)
    quick = args.quick
    xla_modes = [mode.strip() == "on" for mode in (args.xla or ("off" if quick else "off,on")).split(",")]
    windows = args.windows or (2 if quick else 5)
    steps = args.steps or (2 if quick else 20)
    train_steps = args.train_steps or (12 if quick else 300)

    import keras

    from efficientnet_tf import hparams, training

    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    result: dict = {"quick": quick, "hardware": hardware.describe(), "throughput": [], "input": []}
    print(hardware.describe_line(result["hardware"]), flush=True)
    info = training.create_strategy("auto")

    def over_budget() -> bool:
        return time.perf_counter() - started > args.budget_seconds

    batch = TOY["batch"]
    for policy in PRECISIONS:
        keras.mixed_precision.set_global_policy(policy)
        try:
            batch, failed = _largest_batch(info, quick, False, steps)
            if failed:
                result.setdefault("batches_that_did_not_fit", {})[policy] = failed
            for jit in xla_modes:
                setting = f"{policy}, XLA {'on' if jit else 'off'}"
                if over_budget():
                    result["throughput"].append({"setting": setting, "skipped": "time budget spent"})
                    continue
                cell = _throughput_cell(info, quick, batch, jit, steps, windows)
                result["throughput"].append(cell)
                print(f"throughput {setting}, batch {batch}: ours {cell['ours_images_per_second']:.1f} img/s, keras "
                      f"{cell['keras_images_per_second']:.1f} img/s", flush=True)
        finally:
            keras.mixed_precision.set_global_policy("float32")

    # The training precision the hardware gets by default (mixed_float16 on a GPU), as a user would run.
    keras.mixed_precision.set_global_policy(hparams.precision_policy("auto", info.device_type))
    try:
        input_batch = TOY["batch"] if quick else min(batch, 128)
        for on_device in (False, True):
            setting = f"autoaugment on the {'device' if on_device else 'host'}"
            if over_budget():
                result["input"].append({"setting": setting, "skipped": "time budget spent"})
                continue
            cell = _input_cell(info, quick, input_batch, on_device, steps)
            result["input"].append(cell)
            print(f"input {setting}: host {cell['host_pipeline_images_per_second']:.1f} img/s, training "
                  f"{cell['training_images_per_second']:.1f} img/s, input wait "
                  f"{100 * cell['input_wait_fraction']:.0f}%", flush=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    formats = ["saved_model"] if quick else ["saved_model", "tflite_float32"]
    if over_budget():
        result["training"] = {"skipped": "time budget spent"}
    else:
        result["training"] = _training_run(quick, TOY["batch"] if quick else 64, train_steps, formats)
        keras.mixed_precision.set_global_policy("float32")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["hardware"]["load_average_at_end"] = hardware.load_average()

    print()
    print(_table(result))
    print(f"\n{result['seconds']:.0f} s in all; results in {args.out}", flush=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    run = result["training"]
    if "skipped" in run:
        return 0
    if not run["export_passed"] or (not quick and not run["loss_fell"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
