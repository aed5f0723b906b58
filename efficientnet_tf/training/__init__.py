"""Training: strategy selection, the strategy.run loop, schedules, EMA, checkpoints, summaries.

    from efficientnet_tf import training
    info = training.create_strategy("auto")
    trainer = training.Trainer(config, info, model_dir, train_dataset_fn=..., eval_dataset_fn=...)
    result = trainer.train(eval_every_epochs=1)
    model, config, class_names = training.restore_for_inference(model_dir)
"""

from efficientnet_tf.training.checkpoints import (
    CheckpointKeeper,
    best_dir,
    checkpoint_dir,
    resolve_checkpoint,
)
from efficientnet_tf.training.ema import ExponentialMovingAverage, averaged_variables
from efficientnet_tf.training.loop import (
    NonFiniteLossError,
    Trainer,
    TrainResult,
    evaluate_checkpoints,
    write_eval_results,
)
from efficientnet_tf.training.model_io import (
    CONFIG_FILE,
    LABELS_FILE,
    build_model_from_config,
    read_config,
    read_labels,
    restore_for_inference,
    restore_weights,
    write_labels,
)
from efficientnet_tf.training.schedules import WarmupDecay, build_optimizer, build_schedule, peak_learning_rate
from efficientnet_tf.training.strategy import (
    StrategyInfo,
    check_batch_size,
    create_strategy,
    precision_policy,
    set_precision,
    split_cpu,
    use_xla,
)
from efficientnet_tf.training.summaries import Progress, Summaries, image_grid, logs_dir
from efficientnet_tf.training.synthetic import synthetic_dataset_fn

__all__ = [
    "CONFIG_FILE",
    "LABELS_FILE",
    "CheckpointKeeper",
    "ExponentialMovingAverage",
    "NonFiniteLossError",
    "Progress",
    "StrategyInfo",
    "Summaries",
    "TrainResult",
    "Trainer",
    "WarmupDecay",
    "averaged_variables",
    "best_dir",
    "build_model_from_config",
    "build_optimizer",
    "build_schedule",
    "check_batch_size",
    "checkpoint_dir",
    "create_strategy",
    "evaluate_checkpoints",
    "image_grid",
    "logs_dir",
    "peak_learning_rate",
    "precision_policy",
    "read_config",
    "read_labels",
    "resolve_checkpoint",
    "restore_for_inference",
    "restore_weights",
    "set_precision",
    "split_cpu",
    "synthetic_dataset_fn",
    "use_xla",
    "write_eval_results",
    "write_labels",
]
