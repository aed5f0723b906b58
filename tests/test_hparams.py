"""The configuration system: defaults from docs/recipe.md §4, layering, strict overrides, resolve, save/load."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from efficientnet_tf import app, hparams
from efficientnet_tf.errors import UserError
from efficientnet_tf.rundir import RunDir


def test_defaults_are_the_reference_recipe() -> None:
    train = hparams.default_config().train
    assert (train.optimizer, train.rmsprop_rho, train.momentum, train.epsilon) == ("rmsprop", 0.9, 0.9, 1e-3)
    assert train.base_learning_rate == 0.016 and train.warmup_epochs == 5
    assert (train.lr_schedule, train.lr_decay_rate, train.lr_decay_epochs, train.lr_staircase) == (
        "exponential", 0.97, 2.4, True)
    assert train.label_smoothing == 0.1 and train.weight_decay == 1e-5
    assert train.ema_decay == 0.9999 and train.epochs == 350
    resolved = hparams.resolve(hparams.build_config([], {"data.dataset": "imagenet"}), num_classes=1000,
                               num_train=1_281_167)
    assert resolved.model.drop_connect_rate == 0.2 and resolved.model.dropout_rate == 0.2


def test_layers_apply_in_order() -> None:
    # defaults < variant < dataset < --hparams (in order) < flags
    config = hparams.build_config()
    assert config.model.image_size == 96  # datasets/imagenette_mini.yaml, the default dataset
    config = hparams.build_config(["model.name=efficientnet-b5"])
    assert config.data.randaug_magnitude == 17  # the variant table's layer follows a model chosen in --hparams
    config = hparams.build_config(["train.batch_size=64", "train.batch_size=48"], {"train.epochs": 2.0})
    assert config.train.batch_size == 48 and config.train.epochs == 2.0
    config = hparams.build_config(["train.batch_size=64"], {"train.batch_size": 16})
    assert config.train.batch_size == 16
    config = hparams.build_config([], {"data.dataset": "imagenet"})
    assert config.model.image_size is None and config.train.batch_size == 2048


def test_yaml_files_and_commas_inside_values(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("train:\n  epochs: 3\n  lr_schedule: cosine\ndata:\n  augment: randaugment\n")
    config = hparams.build_config([str(path), "train.profile_steps=10,20,train.seed=5"])
    assert (config.train.epochs, config.train.lr_schedule, config.data.augment) == (3, "cosine", "randaugment")
    assert config.train.profile_steps == "10,20" and config.train.seed == 5


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.batch_sise=3", "did you mean train.batch_size?"),
        ("trian.epochs=3", "did you mean train.epochs?"),
        ("batchsize=3", "did you mean train.batch_size?"),
        ("train.learning_rat=0.1", "learning_rate?"),
        ("train.zzz=1", "see hparams/defaults.yaml"),
    ],
)
def test_unknown_keys_fail_with_a_suggestion(override: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        hparams.build_config([override])
    message = str(caught.value)
    assert "unknown hparams key" in message and expected in message and "\n" not in message


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  warmup_epoch: 1\n")
    with pytest.raises(UserError, match=r"unknown hparams key 'train.warmup_epoch' in .*bad.yaml; did you mean "
                                        r"train.warmup_epochs\?"):
        hparams.build_config([str(path)])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.batch_size=abc", "takes an integer"),
        ("train.batch_size=1.5", "takes an integer"),
        ("model.image_size=1.5", "takes an integer"),
        ("train.deterministic=1", "takes true or false"),
        ("train.epochs=true", "takes a number"),
        ("train=3", "is a section"),
        ("=3", "write section.key=value"),
    ],
)
def test_type_errors_are_one_line(override: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        hparams.build_config([override])


def test_values_are_typed() -> None:
    config = hparams.build_config(["train.epochs=2", "runtime.jit_compile=true", "model.dropout_rate=0",
                                   "train.train_steps=10.0"])
    assert config.train.epochs == 2.0 and isinstance(config.train.epochs, float)
    assert config.runtime.jit_compile == "true"
    assert config.model.dropout_rate == 0.0 and isinstance(config.model.dropout_rate, float)
    assert config.train.train_steps == 10 and isinstance(config.train.train_steps, int)


def test_exponent_notation_is_a_number_in_overrides_and_files(tmp_path: pathlib.Path) -> None:
    # YAML 1.1 reads 1e-5 (no dot) as a string; a user writes it that way all the same.
    path = tmp_path / "small.yaml"
    path.write_text("train:\n  epsilon: 1e-6\n  batch_size: 1E2\n")
    config = hparams.build_config([str(path), "train.weight_decay=4e-5", "train.max_seconds=1e3"])
    assert config.train.epsilon == 1e-6 and config.train.weight_decay == 4e-5
    assert config.train.batch_size == 100 and isinstance(config.train.batch_size, int)
    assert config.train.max_seconds == 1000.0
    with pytest.raises(UserError, match="takes a number"):
        hparams.build_config(["train.epsilon=small"])
    with pytest.raises(UserError, match="takes a number"):
        hparams.build_config(["train.epsilon=nan"])


def test_missing_or_invalid_yaml(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        hparams.build_config([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        hparams.build_config([str(bad)])
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping of sections"):
        hparams.build_config([str(listing)])


def test_resolve_fills_derived_values() -> None:
    config = hparams.build_config(["model.name=efficientnet-b2", "data.dataset=imagenet"], {"train.batch_size": 256})
    resolved = hparams.resolve(config, num_classes=1000, num_train=1_281_167)
    assert resolved.model.image_size == 260 and resolved.model.dropout_rate == 0.3
    assert resolved.data.resize_method == "bicubic" and resolved.model.num_classes == 1000
    assert resolved.train.steps_per_epoch == 1_281_167 // 256
    assert resolved.train.train_steps == 350 * (1_281_167 // 256)
    assert resolved.eval.batch_size == 256
    assert config.model.image_size is None  # resolve returns a copy
    lite = hparams.resolve(hparams.build_config(["model.name=efficientnet-lite0"]), num_classes=10, num_train=800)
    assert lite.data.resize_method == "bilinear"
    steps = hparams.resolve(hparams.build_config([], {"train.train_steps": 7}), num_classes=10, num_train=800)
    assert steps.train.train_steps == 7


def test_resolve_rejects_inconsistent_values() -> None:
    with pytest.raises(UserError, match="has 10 classes"):
        hparams.resolve(hparams.build_config(["model.num_classes=5"]), num_classes=10, num_train=800)
    with pytest.raises(UserError, match="larger than the 800 training images"):
        hparams.resolve(hparams.build_config([], {"train.batch_size": 1024}), num_classes=10, num_train=800)
    with pytest.raises(UserError, match="log_every_steps must be at least 1"):
        hparams.resolve(hparams.build_config(["train.log_every_steps=0"]), num_classes=10, num_train=800)


def test_save_and_load_round_trip(tmp_path: pathlib.Path) -> None:
    config = hparams.resolve(hparams.build_config(["train.seed=3,data.augment=randaugment"]), num_classes=10,
                             num_train=800)
    run = RunDir(str(tmp_path))
    path = run.write_config(config)
    assert pathlib.Path(path).name == "config.yaml"
    loaded = run.read_config()
    assert hparams.differences(config, loaded) == {}
    assert loaded.train.seed == 3 and loaded.model.image_size == 96
    text = pathlib.Path(path).read_text()
    assert text.index("model:") < text.index("data:") < text.index("train:")
    (tmp_path / "config.yaml").write_text(text.replace("  epochs:", "  epochz:"))
    with pytest.raises(UserError, match="did you mean train.epochs"):
        run.read_config()
    with pytest.raises(UserError, match="no config.yaml"):
        RunDir(str(tmp_path / "elsewhere")).read_config()


def test_a_run_config_keeps_its_derived_values_under_a_recipe_with_nulls(tmp_path: pathlib.Path) -> None:
    """`--mode=export --hparams=hparams/finetune.yaml`: the recipe's nulls mean "derive", and the run already
    derived them; they must not turn its resolved values back into nulls. Explicit values still apply."""
    recipe = str(pathlib.Path(hparams.DEFAULTS_FILE).parent / "finetune.yaml")
    config = hparams.resolve(hparams.build_config([recipe]), num_classes=10, num_train=800)
    assert config.model.image_size == 224  # null in the recipe, derived from the variant
    RunDir(str(tmp_path)).write_config(config)
    read = app.run_config(str(tmp_path), [recipe, "eval.batch_size=7"])
    assert read.model.image_size == 224
    assert read.eval.batch_size == 7 and hparams.differences(config, read) == {"eval.batch_size": (
        config.eval.batch_size, 7)}


def test_dataset_files_are_found_by_name_then_family() -> None:
    datasets = pathlib.Path(hparams.DEFAULTS_FILE).parent / "datasets"
    assert hparams.dataset_file("imagenette_mini") == str(datasets / "imagenette_mini.yaml")
    assert hparams.dataset_file("synthetic") == str(datasets / "synthetic.yaml")
    # No file of its own: the family's (the part before the first colon), else none.
    assert hparams.dataset_file("synthetic:other") == str(datasets / "synthetic.yaml")
    assert not (datasets / "tfds.yaml").exists() and hparams.dataset_file("tfds:cifar10") is None
    assert hparams.dataset_file("folder:/photos/synthetic") is None
    assert hparams.dataset_file("nothing-like-this") is None


def test_every_shipped_yaml_is_valid() -> None:
    root = pathlib.Path(hparams.DEFAULTS_FILE).parent
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "defaults.yaml" or path.parent.name == "studies":  # study specs: tests/test_study.py
            continue
        hparams.build_config([str(path)])  # strict: fails on any unknown key or wrong type
    for name in ("efficientnet-b5", "efficientnet-b7", "efficientnet-b0"):
        hparams.build_config([f"model.name={name}"])


@pytest.mark.parametrize("spelling", ["efficientnet_b5", "EfficientNet-B5", "EFFICIENTNET_B5", " efficientnet-b5"])
def test_model_name_spellings_resolve_to_the_same_config(spelling: str) -> None:
    """Any spelling of a variant gets the canonical name and the variant's layer (RandAugment 17 for B5)."""
    canonical = hparams.build_config([], {"model.name": "efficientnet-b5"})
    for config in (hparams.build_config([], {"model.name": spelling}), hparams.build_config([f"model.name={spelling}"])):
        assert config.model.name == "efficientnet-b5"
        assert config.data.randaug_magnitude == 17
        assert hparams.differences(canonical, config) == {}


def test_variant_layer_comes_from_the_variant_table() -> None:
    from efficientnet_tf.models import scaling

    assert hparams.variant_layer("efficientnet-b7") == {"data": {"randaug_magnitude": 28}}
    assert hparams.variant_layer("efficientnet-b0") == {}
    assert scaling.get_variant("efficientnet_b4").paper_madds_b == 4.2


def test_layer_files_can_start_from_a_base(tmp_path: pathlib.Path) -> None:
    (tmp_path / "recipe.yaml").write_text("train:\n  optimizer: adamw\n  epochs: 5\nmodel:\n  dropout_rate: 0.0\n")
    (tmp_path / "mine.yaml").write_text("base: recipe.yaml\ntrain:\n  epochs: 2\n")
    config = hparams.build_config([str(tmp_path / "mine.yaml")])
    assert (config.train.optimizer, config.train.epochs, config.model.dropout_rate) == ("adamw", 2, 0.0)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        hparams.build_config([str(tmp_path / "loop.yaml")])


def test_embedded_default_uses_the_short_schedule_recipe_file() -> None:
    """datasets/imagenette_mini.yaml builds on hparams/imagenette.yaml instead of repeating it."""
    root = pathlib.Path(hparams.DEFAULTS_FILE).parent
    mini = (root / "datasets" / "imagenette_mini.yaml").read_text()
    assert "base: ../imagenette.yaml" in mini
    recipe = hparams.build_config([str(root / "imagenette.yaml")], {"data.dataset": "synthetic"})
    embedded = hparams.build_config([])
    for key in ("train.optimizer", "train.base_learning_rate", "train.lr_schedule", "train.warmup_epochs",
                "model.batch_norm_momentum", "model.zero_init_residual", "data.min_crop_area", "data.augment"):
        section, name = key.split(".")
        assert embedded[section][name] == recipe[section][name], key


def test_a_resolved_config_is_frozen_and_reads_back_as_the_same_object(tmp_path: pathlib.Path) -> None:
    """config.yaml is the RunConfig written out: read back, it is equal to the object, derived values included."""
    recipe = str(pathlib.Path(hparams.DEFAULTS_FILE).parent / "imagenette_progressive.yaml")
    layered = hparams.build_config([recipe, "model.image_size=128",
                                    "export.formats=tflite,onnx"], {"train.batch_size": 32})
    config = hparams.resolve(layered, num_classes=10, num_train=9000, device_type="GPU", num_replicas=2)
    assert config.derived.per_replica_batch == 16 and config.runtime.mixed_precision == "mixed_float16"
    assert [s.image_size for s in config.derived.stages] == [64, 80, 96, 112]
    assert config.export.formats == ("tflite", "onnx") and config.runtime.jit_compile is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.batch_size = 64
    run = RunDir(str(tmp_path))
    run.write_config(config)
    assert run.read_config() == config
    again = hparams.resolve(hparams.build_config([str(tmp_path / "config.yaml")]), num_classes=10, num_train=9000,
                            device_type="GPU", num_replicas=2)  # the file as a --hparams layer: facts skipped
    assert again == config
    changed = hparams.replace(config, {"train.batch_size": 64})  # derived values stay as they were ...
    assert changed.derived.per_replica_batch == 32 and changed.train.steps_per_epoch == 9000 // 32
    derived_again = hparams.replace(config, {"train.batch_size": 64, "train.steps_per_epoch": None})  # ... or null
    assert derived_again.train.steps_per_epoch == 9000 // 64 and derived_again.train.train_steps == 2810
    with pytest.raises(UserError, match="does not split evenly across 2 replicas"):
        hparams.replace(config, {"train.batch_size": 33})
