"""Fine-tuning: frozen warm-up with batch norm in inference mode, unfreezing by whole units from the top."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import build_model, hparams, training
from efficientnet_tf.data import synthetic_dataset_fn
from efficientnet_tf.errors import UserError
from efficientnet_tf.training import finetune

TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"


def _config(*items: str, steps: int = 4, per_epoch: int = 4, num_classes: int = 3):
    return hparams.resolve(
        hparams.build_config([TINY, "model.dropout_rate=0,model.drop_connect_rate=0",
                              f"train.batch_size=4,train.train_steps={steps},train.steps_per_epoch={per_epoch}",
                              "train.image_summary=false,train.log_every_steps=1,train.ema_decay=0",
                              "train.optimizer=adam,train.base_learning_rate=0.5", *items]),
        num_classes=num_classes, num_train=16,
    )


def _schedule(freeze=0.0, blocks=-1, every=0.0, bn=True, per_epoch=10):
    config = hparams.build_config([f"finetune.freeze_epochs={freeze},finetune.unfreeze_blocks={blocks}",
                                   f"finetune.unfreeze_every_epochs={every},finetune.train_batch_norm={str(bn).lower()}",
                                   f"train.steps_per_epoch={per_epoch}"])
    return finetune.FineTuneSchedule.of(hparams.resolve(config, num_classes=3, num_train=1000))


def test_defaults_freeze_nothing() -> None:
    assert not _schedule().active


def test_schedule_warm_up_then_one_unit_per_interval() -> None:
    """Warm-up of 1 epoch (10 steps), then one more unit every half epoch, up to 3 units."""
    s = _schedule(freeze=1.0, blocks=3, every=0.5)
    assert s.active
    assert [s.unfrozen_at(k, 9) for k in (0, 9, 10, 14, 15, 19, 20, 100)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert s.next_change(0, 9, 100) == 10
    assert s.next_change(10, 9, 100) == 15
    assert s.next_change(20, 9, 100) is None  # all three are unfrozen
    assert s.next_change(12, 9, 14) is None  # past the end of training
    every = _schedule(freeze=0.5)
    assert [every.unfrozen_at(k, 9) for k in (4, 5)] == [0, 9] and every.next_change(5, 9, 100) is None


def test_schedule_errors_are_one_line() -> None:
    for kwargs in ({"freeze": -1.0}, {"blocks": -2}, {"every": -0.5}):
        with pytest.raises(UserError) as error:
            _schedule(**kwargs)
        assert "\n" not in str(error.value) and "finetune." in str(error.value)


def test_units_run_from_the_head_convolution_down_to_the_stem() -> None:
    model = build_model("efficientnet-b0", width_coefficient=0.25, depth_coefficient=0.25, input_shape=(32, 32, 3),
                        classes=3)
    units = finetune.units_top_down(model)
    names = [u.name for u in units]
    blocks = sorted({layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")})
    assert names[0] == "top" and names[-1] == "stem" and len(names) == len(blocks) + 2
    assert names[1:-1] == sorted(blocks, reverse=True)  # block7a, block6a, ..., block1a
    assert not any(layer.name == "predictions" for u in units for layer in u.layers)
    parameters = finetune.count_weights(model.trainable_variables)
    phase = finetune.apply_phase(model, _schedule(blocks=2, bn=False), 2, parameters)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "predictions" in trainable and "top_conv" in trainable and "top_bn" not in trainable
    top_block = {layer.name for layer in model.layers if layer.name.startswith(names[1] + "_") and layer.weights}
    assert {n for n in top_block if not n.endswith("bn")} <= trainable  # its convolutions train
    assert not {n for n in top_block if n.endswith("bn")} & trainable  # its batch norm stays frozen
    assert not any(n.startswith(names[2] + "_") for n in trainable)  # the next block down is frozen
    assert "stem_conv" not in trainable and phase.unfrozen == 2
    assert 0 < phase.trainable_weights < phase.total_weights == parameters
    assert "2 of" in phase.describe(len(units)) and "inference mode" in phase.describe(len(units))


def _snapshot(model):
    return {v.path: np.array(v.value) for v in model.weights}


def test_frozen_warm_up_keeps_backbone_and_batch_norm_statistics(tmp_path) -> None:
    """During the warm-up nothing but the head changes: no kernel, no gamma/beta, no moving mean/variance."""
    config = _config("finetune.freeze_epochs=10", steps=3)
    info = training.create_strategy("default")
    trainer = training.Trainer(config, info, str(tmp_path), train_dataset_fn=synthetic_dataset_fn(32, 3, 4, seed=1))
    before = _snapshot(trainer.model)
    trainer.train()
    after = _snapshot(trainer.model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    changed = {p for p in changed if "seed_generator" not in p}
    assert changed and all(p.startswith("predictions/") for p in changed), sorted(changed)[:5]
    moving = [p for p in before if p.endswith(("moving_mean", "moving_variance"))]
    assert moving and all(np.array_equal(before[p], after[p]) for p in moving)


def test_unfreezing_after_warm_up_trains_the_backbone_but_not_batch_norm(tmp_path) -> None:
    """2 frozen steps, then every unit trains with batch norm frozen; the phase change is logged to TensorBoard."""
    config = _config("finetune.freeze_epochs=0.5,finetune.train_batch_norm=false", steps=4, per_epoch=4)
    info = training.create_strategy("default")
    trainer = training.Trainer(config, info, str(tmp_path), train_dataset_fn=synthetic_dataset_fn(32, 3, 4, seed=2))
    before = _snapshot(trainer.model)
    trainer.train()
    after = _snapshot(trainer.model)
    assert not np.array_equal(before["stem_conv/kernel"], after["stem_conv/kernel"])
    bn = [p for p in before if "_bn/" in p and "seed" not in p]
    assert bn and all(np.array_equal(before[p], after[p]) for p in bn)
    tags = {}
    for root, _, files in os.walk(os.path.join(str(tmp_path), "logs", "train")):
        for name in files:
            for record in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in record.summary.value:
                    tags.setdefault(value.tag, []).append(record.step)
    assert tags["finetune/unfrozen_units"] == [0, 2]  # frozen at step 0, everything from step 2


def test_new_head_and_import_report_saved_in_the_run(tmp_path) -> None:
    """--init_weights with finetune.new_head: the body is imported, the fitting head re-initialised, the report saved."""
    source = build_model("efficientnet-b0", width_coefficient=0.25, depth_coefficient=0.25, input_shape=(32, 32, 3),
                         classes=3)
    weights_file = str(tmp_path / "source.keras")
    source.save(weights_file)
    config = _config("finetune.new_head=true,finetune.freeze_epochs=1", f"train.init_weights={weights_file}", steps=1)
    info = training.create_strategy("default")
    run_dir = str(tmp_path / "run")
    trainer = training.Trainer(config, info, run_dir, train_dataset_fn=synthetic_dataset_fn(32, 3, 4, seed=3))
    np.testing.assert_array_equal(np.array(trainer.model.get_layer("stem_conv").kernel.value),
                                  np.array(source.get_layer("stem_conv").kernel.value))
    assert not np.array_equal(np.array(trainer.model.get_layer("predictions").kernel.value),
                              np.array(source.get_layer("predictions").kernel.value))
    with open(os.path.join(run_dir, "import_report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["source"] == weights_file
    assert "stem_conv" in report["loaded"] and "predictions" not in report["loaded"]
    assert "new_head" in report["skipped"]["predictions"]
