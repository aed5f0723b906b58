"""`resolve`: a layered config and the facts of a run -> a frozen `RunConfig`, every value derived here.

Each value that is not given has its default and its derivation in this module, and nowhere else:
image size, dropout, width and depth from the variant table; the input normalisation from the
variant or the named pretrained weights; the resize kernel; the class count from the dataset; steps
per epoch and in all; the batch per replica (split evenly across the replicas or refused); the
evaluation batch; steps per tf.function call, precision and XLA from the device type; the seed of a
deterministic run; the progressive stages; learning-rate warm-up and decay in steps; the
fine-tuning phases in steps.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging
from efficientnet_tf.hparams import settings
from efficientnet_tf.hparams.settings import Derived, Facts, RunConfig, Stage

from efficientnet_tf.errors import UserError
from efficientnet_tf.models.scaling import DEFAULT_DROP_CONNECT_RATE, get_variant
from efficientnet_tf.models.weights import published

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
DEFAULT_STEPS_PER_LOOP = {"CPU": 1, "GPU": 100, "TPU": 1000}


def precision_policy(requested: str, device_type: str) -> str:
    """The Keras dtype policy: bfloat16 on TPU, float16 on GPU, float32 on CPU unless asked."""
    if requested not in PRECISIONS:
        raise UserError(f"unknown mixed precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    return {"TPU": "mixed_bfloat16", "GPU": "mixed_float16"}.get(device_type, "float32")


def use_xla(requested: str | bool, device_type: str) -> bool:
    """Whether to jit-compile the training step: XLA on GPU/TPU, off on CPU (~8x slower there)."""
    if isinstance(requested, bool):
        return requested
    value = str(requested).lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    if value != "auto":
        raise UserError(f"runtime.jit_compile must be auto, true or false, got {requested!r}")
    return device_type in ("GPU", "TPU")


def split_batch(global_batch: int, replicas: int, what: str = "--batch_size") -> int:
    """The per-replica batch size; a UserError when the global batch does not split evenly."""
    if global_batch < replicas or global_batch % replicas:
        nearest = max(replicas, (global_batch // replicas) * replicas)
        raise UserError(
            f"{what}={global_batch} does not split evenly across {replicas} replicas; "
            f"use a multiple of {replicas}, e.g. {nearest}"
        )
    return global_batch // replicas


def peak_learning_rate(base_learning_rate: float, global_batch: int) -> float:
    """The linear scaling rule: base rate per 256 images times global_batch / 256."""
    return float(base_learning_rate) * float(global_batch) / 256.0


def parse_profile_steps(value: str | None) -> tuple[int, int] | None:
    """Parse "START,STOP" (train.profile_steps) into a step range for the profiler."""
    if not value:
        return None
    try:
        start, stop = (int(part) for part in str(value).split(","))
    except ValueError:
        raise UserError(f"train.profile_steps must be START,STOP (e.g. 10,20), got {value!r}") from None
    if not 0 <= start < stop:
        raise UserError(f"train.profile_steps needs 0 <= START < STOP, got {value!r}")
    return start, stop


def input_wait_alarm(value: Any) -> float | None:
    """`train.input_wait_alarm` as a fraction in (0, 1), or None (off: null, 0, false, off)."""
    if value is None or value is False or str(value).strip().lower() in ("0", "0.0", "off", "false", "none", "null"):
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = -1.0
    if not 0.0 < threshold < 1.0:
        raise UserError(f"train.input_wait_alarm must be a fraction of step time between 0 and 1 (e.g. 0.2), "
                        f"or 0 to turn the alarm off; got {value!r}")
    return threshold


def _round_size(pixels: float, step: int) -> int:
    return max(step, int(round(pixels / step)) * step)


def progressive_stages(values: dict[str, Any], total_steps: int) -> tuple[Stage, ...]:
    """The training stages: one with the run's own values, or train.progressive.stages of growing size.

    Stages are of equal length; the first uses the *_start values, the last the run's own
    (image_size_end, data.randaug_magnitude, data.mixup_alpha, data.cutmix_alpha, model.dropout_rate),
    the ones between are spaced linearly, image sizes rounded to image_size_step pixels.
    """
    model, data, spec = values["model"], values["data"], values["train"]["progressive"]
    count = int(spec["stages"])
    last = {"randaug_magnitude": float(data["randaug_magnitude"]), "mixup_alpha": float(data["mixup_alpha"]),
            "cutmix_alpha": float(data["cutmix_alpha"]), "dropout_rate": float(model["dropout_rate"])}
    if count == 0:
        return (Stage(0, 0, total_steps, int(model["image_size"]), **last),)
    if count < 2:
        raise UserError(f"train.progressive.stages must be 0 (off) or at least 2, got {count}")
    if count > total_steps:
        raise UserError(f"train.progressive.stages={count} is more than the {total_steps} training steps")
    step = int(spec["image_size_step"])
    if step < 1:
        raise UserError(f"train.progressive.image_size_step must be at least 1, got {step}")
    eval_size = int(model["image_size"])
    final_size = int(spec["image_size_end"]) if spec["image_size_end"] is not None else eval_size
    if not 0 < final_size <= eval_size:
        # EfficientNetV2 variants set it (hparams/variants.py), so a smaller model.image_size lands here.
        raise UserError(f"train.progressive.image_size_end must be between 1 and model.image_size "
                        f"({eval_size}), got {final_size}; lower it too, or set train.progressive.stages=0 "
                        "to train at one size")
    start_size = int(spec["image_size_start"]) if spec["image_size_start"] is not None else _round_size(
        final_size / 2, step)
    if not 0 < start_size <= final_size:
        raise UserError(f"train.progressive.image_size_start must be between 1 and the last stage's size "
                        f"({final_size}), got {start_size}")
    dropout_start = spec["dropout_rate_start"]
    first = {"randaug_magnitude": float(spec["randaug_magnitude_start"]),
             "mixup_alpha": float(spec["mixup_alpha_start"]), "cutmix_alpha": float(spec["cutmix_alpha_start"]),
             "dropout_rate": float(model["dropout_rate"] if dropout_start is None else dropout_start)}
    for key, value in first.items():
        if value < 0 or (key == "dropout_rate" and value >= 1):
            raise UserError(f"train.progressive.{key}_start must be >= 0" + (" and < 1" if key == "dropout_rate"
                                                                               else "") + f", got {value}")
    stages = []
    for i in range(count):
        t = i / (count - 1)
        size = final_size if i == count - 1 else _round_size(start_size + t * (final_size - start_size), step)
        mixed = {k: first[k] + t * (last[k] - first[k]) for k in last}
        stages.append(Stage(i, total_steps * i // count, total_steps * (i + 1) // count, min(size, final_size),
                            **mixed))
    spec["image_size_start"], spec["image_size_end"] = start_size, final_size
    spec["dropout_rate_start"] = first["dropout_rate"]
    return tuple(stages)


def _normalization(model: dict[str, Any], init_weights: str | None) -> str | None:
    """model.normalization: given, or the named pretrained weights', or the variant's; None when the run
    starts from a weights file and names none (the file's normalisation layer then applies)."""
    named = bool(init_weights) and published.is_weights_name(init_weights)
    if model["normalization"] is not None:
        if named and published.normalization_for(init_weights, model["name"]) != model["normalization"]:
            logging.warning("model.normalization=%s overrides %s, which the %s weights were trained with",
                            model["normalization"], published.normalization_for(init_weights, model["name"]),
                            init_weights)
        return str(model["normalization"])
    if init_weights and not named:
        return None
    return published.normalization_for(init_weights, model["name"])


def _resolve_model(model: dict[str, Any], facts: Facts, init_weights: str | None, dataset: str) -> None:
    variant = get_variant(model["name"])
    if model["image_size"] is None:
        model["image_size"] = int(variant.resolution)
    if model["dropout_rate"] is None:
        model["dropout_rate"] = float(variant.dropout_rate)
    if model["drop_connect_rate"] is None:
        model["drop_connect_rate"] = DEFAULT_DROP_CONNECT_RATE
    if model["batch_norm_momentum"] is None:
        model["batch_norm_momentum"] = float(variant.batch_norm_momentum)
    if model["width_coefficient"] is None:
        model["width_coefficient"] = float(variant.width)
    if model["depth_coefficient"] is None:
        model["depth_coefficient"] = float(variant.depth)
    model["normalization"] = _normalization(model, init_weights)
    if model["num_classes"] is None:
        model["num_classes"] = int(facts.num_classes)
    elif int(model["num_classes"]) != int(facts.num_classes):
        raise UserError(f"model.num_classes={model['num_classes']} but dataset {dataset} has {facts.num_classes} "
                        "classes; drop the override")
    if int(model["image_size"]) < 1:
        raise UserError(f"model.image_size must be at least 1, got {model['image_size']}")


def _resolve_train(train: dict[str, Any], facts: Facts, dataset: str) -> None:
    if int(train["batch_size"]) < 1:
        raise UserError(f"batch size must be at least 1, got {train['batch_size']}")
    if train["steps_per_epoch"] is None:
        if facts.num_train < int(train["batch_size"]):
            raise UserError(f"batch size {train['batch_size']} is larger than the {facts.num_train} training images "
                            f"of {dataset}; use a smaller --batch_size")
        train["steps_per_epoch"] = int(facts.num_train) // int(train["batch_size"])
    if train["train_steps"] is None:
        train["train_steps"] = max(1, int(round(float(train["epochs"]) * int(train["steps_per_epoch"]))))
    if train["steps_per_loop"] is None:
        train["steps_per_loop"] = DEFAULT_STEPS_PER_LOOP.get(facts.device_type, 1)
    if train["deterministic"] and train["seed"] is None:
        train["seed"] = 0
    for key in ("train_steps", "steps_per_epoch", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "steps_per_loop"):
        if int(train[key]) < 1:
            raise UserError(f"train.{key} must be at least 1, got {train[key]}")


def _finetune_steps(finetune: dict[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """(frozen warm-up steps, steps between unfreezing one more unit; 0 = all at once)."""
    freeze, every = float(finetune["freeze_epochs"]), float(finetune["unfreeze_every_epochs"])
    if freeze < 0 or every < 0:
        raise UserError(f"finetune.freeze_epochs and finetune.unfreeze_every_epochs must be >= 0, "
                        f"got {freeze:g} and {every:g}")
    if int(finetune["unfreeze_blocks"]) < -1:
        raise UserError(f"finetune.unfreeze_blocks must be -1 (all), 0 (backbone stays frozen) or a count, "
                        f"got {finetune['unfreeze_blocks']}")
    every_steps = max(1, int(round(every * steps_per_epoch))) if every > 0 else 0
    return int(round(freeze * steps_per_epoch)), every_steps


def _resolve_qat(values: dict[str, Any], steps_per_epoch: int) -> tuple[int | None, int | None]:
    """Quantisation-aware training's checks and settings: float32, one image size, the int8 file as the export;
    returns the steps at which batch norm and the activation ranges freeze (None: never, or QAT off)."""
    qat, runtime, train, export = values["qat"], values["runtime"], values["train"], values["export"]
    qat["distill"] = float(qat["distill"])
    if not 0.0 <= qat["distill"] <= 1.0:
        raise UserError(f"qat.distill is the start model's share of the training target, between 0 (the labels) and "
                        f"1 (its probabilities), got {qat['distill']}")
    qat["distill_temperature"] = float(qat["distill_temperature"])
    if not qat["distill_temperature"] > 0:
        raise UserError(f"qat.distill_temperature divides the logits, so it must be positive, got "
                        f"{qat['distill_temperature']}")
    if not qat["enabled"]:
        if qat["distill"] > 0:
            raise UserError("qat.distill is part of quantisation-aware training: use it with qat.enabled=true "
                            "(hparams/qat.yaml)")
        return None, None
    if runtime["mixed_precision"] == "auto":
        runtime["mixed_precision"] = "float32"  # the simulation computes in float32, as the converter reads it
    elif runtime["mixed_precision"] != "float32":
        raise UserError(f"quantisation-aware training runs in float32; drop runtime.mixed_precision="
                        f"{runtime['mixed_precision']}")
    if int(train["progressive"]["stages"]) > 0:
        raise UserError("quantisation-aware training trains at one image size (the file's); set "
                        "train.progressive.stages=0")
    if not 0.0 < float(qat["range_momentum"]) < 1.0:
        raise UserError(f"qat.range_momentum must be between 0 and 1, got {qat['range_momentum']}")
    formats = export["formats"]
    if formats is None:
        export["formats"] = ["tflite_int8"]
    elif ([formats] if isinstance(formats, str) else list(formats)) != ["tflite_int8"]:
        raise UserError(f"a quantisation-aware run exports its int8 file only (export.formats=[tflite_int8]), got "
                        f"{formats}; export the run it started from for the float formats")
    steps = []
    for key in ("freeze_batch_norm_epochs", "freeze_ranges_epochs"):
        epochs = qat[key]
        if epochs is not None and float(epochs) < 0:
            raise UserError(f"qat.{key} must be >= 0 or null (never), got {epochs}")
        steps.append(None if epochs is None else int(round(float(epochs) * steps_per_epoch)))
    return steps[0], steps[1]


def check_augment_backend(data: dict[str, Any], train: dict[str, Any]) -> None:
    """data.augment_backend=keras_cv: refuse, in one line, what keras-cv's RandAugment cannot run
    (the reasons are in data/augment_keras_cv.py)."""
    if data["augment_backend"] != "keras_cv" or data["augment"] == "none":
        return
    prefix = "data.augment_backend=keras_cv"
    if data["augment"] != "randaugment":
        raise UserError(f"{prefix} runs RandAugment only; keras-cv has no {data['augment']!r} policy: "
                        "set data.augment=randaugment or data.augment_backend=native")
    if data["augment_on_device"]:
        raise UserError(f"{prefix} cannot run with data.augment_on_device=true: keras-cv's Equalization op "
                        "(HistogramFixedWidth) has no XLA kernel; augment on the host or use native")
    if train["deterministic"]:
        raise UserError(f"{prefix} cannot give train.deterministic=true: keras-cv's RandAugment draws from "
                        "stateful generators, not per-image seeds; use data.augment_backend=native")
    magnitudes = [float(data["randaug_magnitude"])]
    if int(train["progressive"]["stages"]) > 0:
        magnitudes.append(float(train["progressive"]["randaug_magnitude_start"]))
    for magnitude in magnitudes:
        if not 0.0 <= magnitude <= 10.0:
            raise UserError(f"{prefix} takes RandAugment magnitudes from 0 to 10 (keras-cv's 0..1), "
                            f"got {magnitude:g}")


def resolve(
    config: ml_collections.ConfigDict | RunConfig,
    *,
    num_classes: int,
    num_train: int,
    device_type: str = "CPU",
    num_replicas: int = 1,
) -> RunConfig:
    """The frozen `RunConfig` of a layered config (or a resolved one, re-resolved for other facts)."""
    facts = Facts(int(num_classes), int(num_train), str(device_type), int(num_replicas))
    values = config.settings() if isinstance(config, RunConfig) else config.to_dict()
    model, data, train, finetune = values["model"], values["data"], values["train"], values["finetune"]
    _resolve_model(model, facts, train["init_weights"], data["dataset"])
    if data["resize_method"] is None:
        data["resize_method"] = get_variant(model["name"]).resize_method
    check_augment_backend(data, train)
    _resolve_train(train, facts, data["dataset"])
    if values["eval"]["batch_size"] is None:
        values["eval"]["batch_size"] = int(train["batch_size"])
    qat_steps = _resolve_qat(values, int(train["steps_per_epoch"]))
    runtime = values["runtime"]
    runtime["mixed_precision"] = precision_policy(runtime["mixed_precision"], facts.device_type)
    runtime["jit_compile"] = use_xla(runtime["jit_compile"], facts.device_type)
    stages = progressive_stages(values, int(train["train_steps"]))
    freeze_steps, every_steps = _finetune_steps(finetune, int(train["steps_per_epoch"]))
    steps_per_epoch = int(train["steps_per_epoch"])
    derived = Derived(
        per_replica_batch=split_batch(int(train["batch_size"]), facts.num_replicas),
        eval_per_replica_batch=split_batch(int(values["eval"]["batch_size"]), facts.num_replicas, "eval.batch_size"),
        stages=stages,
        model_dropout_rate=max(float(model["dropout_rate"]), max(s.dropout_rate for s in stages)),
        peak_learning_rate=peak_learning_rate(train["base_learning_rate"], train["batch_size"]),
        warmup_steps=int(round(float(train["warmup_epochs"]) * steps_per_epoch)),
        decay_steps=float(train["lr_decay_epochs"]) * steps_per_epoch,
        freeze_steps=freeze_steps,
        unfreeze_every_steps=every_steps,
        profile_steps=parse_profile_steps(train["profile_steps"]),
        input_wait_alarm=input_wait_alarm(train["input_wait_alarm"]),
        qat_freeze_batch_norm_step=qat_steps[0],
        qat_freeze_ranges_step=qat_steps[1],
    )
    sections = {name: settings.build(cls, values[name]) for name, cls in settings.SECTIONS.items()
                if name not in settings.RUN_ONLY_SECTIONS}
    return RunConfig(**sections, facts=facts, derived=derived)


def on_hardware(config: RunConfig, device_type: str, num_replicas: int) -> RunConfig:
    """The same run's configuration resolved for other hardware (evaluation or export elsewhere)."""
    return resolve(config, num_classes=config.facts.num_classes, num_train=config.facts.num_train,
                   device_type=device_type, num_replicas=num_replicas)
