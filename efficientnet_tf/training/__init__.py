"""Training: strategy selection, the train step, the loop and its phases, schedules, checkpoints, summaries,
evaluation.

    from efficientnet_tf import training
    info = training.create_strategy("auto")
    trainer = training.Trainer(config, info, model_dir, train_dataset_fn=..., eval_dataset_fn=...)
    result = trainer.train(eval_every_epochs=1)

`config` is a resolved `hparams.RunConfig`. Most callers go through `efficientnet_tf.app`, which
prepares the config, data and run directory; `training.inputs` makes a run's dataset functions.
"""

from efficientnet_tf.models.ema import ExponentialMovingAverage, averaged_variables
from efficientnet_tf.training import inputs
from efficientnet_tf.training.checkpoints import CheckpointKeeper, CheckpointWriteError
from efficientnet_tf.training.evaluation import evaluate_checkpoints, evaluate_model, make_eval_batch_fn
from efficientnet_tf.training.loop import NonFiniteLossError, Trainer, TrainResult
from efficientnet_tf.training.preemption import EXIT_PREEMPTED, Preempted
from efficientnet_tf.training.schedules import WarmupDecay, build_optimizer, build_schedule
from efficientnet_tf.training.strategy import StrategyInfo, check_batch_size, create_strategy, set_precision, split_cpu
from efficientnet_tf.training.summaries import Progress, Summaries, image_grid

__all__ = [
    "EXIT_PREEMPTED",
    "CheckpointKeeper",
    "CheckpointWriteError",
    "ExponentialMovingAverage",
    "NonFiniteLossError",
    "Preempted",
    "Progress",
    "StrategyInfo",
    "Summaries",
    "TrainResult",
    "Trainer",
    "WarmupDecay",
    "averaged_variables",
    "build_optimizer",
    "build_schedule",
    "check_batch_size",
    "create_strategy",
    "evaluate_checkpoints",
    "evaluate_model",
    "image_grid",
    "inputs",
    "make_eval_batch_fn",
    "set_precision",
    "split_cpu",
]
