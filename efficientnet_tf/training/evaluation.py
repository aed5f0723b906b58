"""Evaluation: a replicated eval step, one pass over the eval data, and the checkpoint evaluator
behind `--mode=eval` (one checkpoint, or every new one while training runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf import model_io
from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.rundir import RunDir, step_of
from efficientnet_tf.training.strategy import StrategyInfo, check_batch_size
from efficientnet_tf.training.summaries import Summaries

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


def dataset_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Options every dataset fed to a strategy gets (sharding is done by the pipelines themselves)."""
    options = tf.data.Options()
    # The pipeline reports bad files through a py_function; its iterator can still be saved.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def make_eval_batch_fn(strategy: tf.distribute.Strategy, model: keras.Model, num_classes: int) -> Callable:
    """A tf.function (images, labels) -> summed [loss, top-1 hits, top-5 hits, count] over replicas."""
    top_k = min(5, int(num_classes))

    def eval_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        top5 = tf.cast(tf.math.in_top_k(labels, logits, top_k), tf.float32)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.reduce_sum(loss), tf.reduce_sum(top1), tf.reduce_sum(top5), count])

    @tf.function(reduce_retracing=True)
    def eval_batch(images: Any, labels: Any) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(eval_step, args=(images, labels)), axis=None)

    return eval_batch


def evaluate_model(strategy: tf.distribute.Strategy, eval_batch: Callable, eval_dataset_fn: DatasetFn) -> dict[str, float]:
    """Run `eval_batch` over one pass of the distributed eval data and average the sums."""
    dataset = strategy.distribute_datasets_from_function(lambda context: dataset_options(eval_dataset_fn(context)))
    totals = np.zeros(4, np.float64)
    for images, labels in dataset:
        totals += eval_batch(images, labels).numpy()
    loss, top1, top5, count = totals
    if count == 0:
        raise UserError("the evaluation data is empty")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "examples": float(count)}


def evaluate_checkpoints(
    config: Any,
    strategy_info: StrategyInfo,
    model_dir: str,
    eval_dataset_fn: DatasetFn,
    *,
    checkpoint: str | None = None,
    continuous: bool = False,
    timeout_seconds: float = 3600.0,
    poll_seconds: float = 10.0,
) -> dict[str, float]:
    """Evaluate a checkpoint's averaged weights (the latest by default), or, `continuous`, every new
    checkpoint as it appears until training's last step or `timeout_seconds` without a new one.

    Writes eval scalars to TensorBoard (logs/eval) and eval_results.json of the run directory;
    returns the last metrics (with "step").
    """
    strategy = strategy_info.strategy
    check_batch_size(int(config.eval.batch_size or config.train.batch_size), strategy_info, "eval.batch_size")
    with strategy.scope():
        model = model_io.build_model_from_config(config)
    eval_batch = make_eval_batch_fn(strategy, model, int(config.model.num_classes))
    summaries = Summaries(model_dir, enabled=strategy_info.is_chief, eval_only=True)
    run = RunDir(model_dir)

    def run_one(path: str) -> dict[str, float]:
        step = model_io.restore_weights(model, path)
        metrics = evaluate_model(strategy, eval_batch, eval_dataset_fn)
        summaries.scalars(step, {k: v for k, v in metrics.items() if k != "examples"}, eval=True)
        if strategy_info.is_chief:
            run.write_eval_results(step, metrics, checkpoint=path)
        logging.info("Eval of %s (step %d): top-1 %.2f%%, top-5 %.2f%%, loss %.4f on %d images", path, step,
                     100 * metrics["top1"], 100 * metrics["top5"], metrics["loss"], int(metrics["examples"]))
        return {**metrics, "step": float(step)}

    try:
        if not continuous:
            return run_one(run.checkpoint(checkpoint))
        last: dict[str, float] | None = None
        final_step = int(config.train.train_steps)
        directory = run.checkpoints_dir
        for path in tf.train.checkpoints_iterator(directory, min_interval_secs=poll_seconds, timeout=timeout_seconds):
            try:
                last = run_one(path)
            except (tf.errors.NotFoundError, UserError) as error:
                # Rolling checkpoints can be deleted between being listed and being read.
                logging.warning("Skipping %s: %s", path, first_line(error))
                continue
            if step_of(path) >= final_step:
                break
        if last is None:
            raise UserError(f"no new checkpoint appeared in {directory} within {timeout_seconds:.0f} s")
        return last
    finally:
        summaries.close()
