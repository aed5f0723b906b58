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

from efficientnet_tf import evaluation_report, run_model
from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.gradcam import GradCam
from efficientnet_tf.hparams import RunConfig
from efficientnet_tf.rundir import RunDir, step_of
from efficientnet_tf.training.strategy import StrategyInfo
from efficientnet_tf.training.summaries import Summaries

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


def dataset_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Options every dataset fed to a strategy gets (sharding is done by the pipelines themselves)."""
    options = tf.data.Options()
    # The pipeline reports bad files through a py_function; its iterator can still be saved.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def make_eval_batch_fn(strategy: tf.distribute.Strategy, model: keras.Model, num_classes: int, *,
                       details: int = 0) -> Callable:
    """A tf.function (images, labels) -> summed [loss, top-1 hits, top-5 hits, count] over replicas.

    With `details` > 0 it returns (sums, per-replica details): per example the label, the class
    probabilities and the loss, and each replica's `details` highest-loss images (for the report).
    """
    top_k = min(5, int(num_classes))

    def eval_step(images: tf.Tensor, labels: tf.Tensor) -> Any:
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        top5 = tf.cast(tf.math.in_top_k(labels, logits, top_k), tf.float32)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        sums = tf.stack([tf.reduce_sum(loss), tf.reduce_sum(top1), tf.reduce_sum(top5), count])
        if not details:
            return sums
        probabilities = tf.nn.softmax(logits, axis=-1)
        # A static k where the batch size is static (XLA on TPU needs one), else the batch's size.
        batch = loss.shape[0]
        worst = tf.math.top_k(loss, k=min(int(details), batch) if batch is not None else
                              tf.minimum(int(details), tf.shape(loss)[0]))
        return sums, {
            "labels": labels, "probabilities": probabilities, "losses": loss,
            "top_images": tf.gather(images, worst.indices), "top_labels": tf.gather(labels, worst.indices),
            "top_probabilities": tf.gather(probabilities, worst.indices), "top_losses": worst.values,
        }

    @tf.function(reduce_retracing=True)
    def eval_batch(images: Any, labels: Any) -> Any:
        outputs = strategy.run(eval_step, args=(images, labels))
        if not details:
            return strategy.reduce(tf.distribute.ReduceOp.SUM, outputs, axis=None)
        sums, per_replica = outputs
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None), per_replica

    return eval_batch


def collect_details(strategy: tf.distribute.Strategy, per_replica: Any, records: evaluation_report.EvalRecords) -> None:
    """Add one batch's per-replica details (see make_eval_batch_fn) to `records` (this worker's replicas)."""
    local = {key: strategy.experimental_local_results(value) for key, value in per_replica.items()}
    for i in range(len(local["labels"])):
        part = {key: np.asarray(values[i]) for key, values in local.items()}
        records.add(part["labels"], part["probabilities"], part["losses"])
        records.add_candidates(part["top_images"], part["top_labels"], part["top_probabilities"], part["top_losses"])


def evaluate_model(strategy: tf.distribute.Strategy, eval_batch: Callable, eval_dataset_fn: DatasetFn,
                   records: evaluation_report.EvalRecords | None = None) -> dict[str, float]:
    """Run `eval_batch` over one pass of the distributed eval data and average the sums; with
    `records` (and an eval_batch made with details), also collect the per-example results."""
    dataset = strategy.distribute_datasets_from_function(lambda context: dataset_options(eval_dataset_fn(context)))
    totals = np.zeros(4, np.float64)
    for images, labels in dataset:
        out = eval_batch(images, labels)
        if isinstance(out, tuple):
            sums, per_replica = out
            if records is not None:
                collect_details(strategy, per_replica, records)
        else:
            sums = out
        totals += sums.numpy()
    loss, top1, top5, count = totals
    if count == 0:
        raise UserError("the evaluation data is empty")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "examples": float(count)}


def write_eval_report(model: keras.Model, records: evaluation_report.EvalRecords, model_dir: str, step: int, *,
                      summaries: Summaries | None = None, explain: bool = False,
                      table: bool = True) -> evaluation_report.EvalReport | None:
    """The per-checkpoint report (efficientnet_tf.evaluation_report.writer) into <model_dir>/evaluation/step-<N>,
    with its pictures in TensorBoard; `explain` adds Grad-CAM overlays to the highest-loss grid, `table`
    logs the per-class table (otherwise one summary line). A report that cannot be written costs a
    warning, never the evaluation."""
    if records.count == 0:
        return None
    heatmaps = None
    try:
        if explain and records.top_losses():
            examples = records.top_losses()
            images = np.stack([e.image for e in examples])
            heatmaps = list(GradCam(model).heatmaps(images, np.array([e.predicted for e in examples])))
        writer = summaries.eval_writer if summaries is not None and summaries.enabled else None
        return evaluation_report.write_report(records, RunDir(model_dir).read_labels(), evaluation_report.report_dir(model_dir, step),
                                    step=step, heatmaps=heatmaps, writer=writer, log_table=table)
    except (OSError, tf.errors.OpError, ValueError) as error:
        logging.warning("Could not write the evaluation report of step %d: %s", step, first_line(error))
        return None


def evaluate_checkpoints(
    config: RunConfig,
    strategy_info: StrategyInfo,
    model_dir: str,
    eval_dataset_fn: DatasetFn,
    *,
    checkpoint: str | None = None,
    continuous: bool = False,
    timeout_seconds: float = 3600.0,
    poll_seconds: float = 10.0,
    explain: bool = False,
) -> dict[str, float]:
    """Evaluate a checkpoint's averaged weights (the latest by default), or, `continuous`, every new
    checkpoint as it appears until training's last step or `timeout_seconds` without a new one.

    Writes eval scalars and pictures to TensorBoard (logs/eval), eval_results.json and the report of
    each checkpoint (<model_dir>/evaluation/step-<N>; `explain`: with Grad-CAM) into the run
    directory; returns the last metrics (with "step").
    """
    strategy = strategy_info.strategy
    with strategy.scope():
        model = run_model.build_model_from_config(config)
    num_classes = config.model.num_classes
    eval_batch = make_eval_batch_fn(strategy, model, num_classes, details=evaluation_report.TOP_LOSS_IMAGES)
    summaries = Summaries(model_dir, enabled=strategy_info.is_chief, eval_only=True)
    run = RunDir(model_dir)
    final_step = config.train.train_steps

    def run_one(path: str) -> dict[str, float]:
        step = run_model.restore_weights(model, path)
        records = evaluation_report.EvalRecords(num_classes)
        metrics = evaluate_model(strategy, eval_batch, eval_dataset_fn, records)
        summaries.scalars(step, {k: v for k, v in metrics.items() if k != "examples"}, eval=True)
        if strategy_info.is_chief:
            run.write_eval_results(step, metrics, checkpoint=path)
            # Watching a run, the per-class table comes once, at its last step; one line for the others.
            write_eval_report(model, records, model_dir, step, summaries=summaries, explain=explain,
                              table=not continuous or step >= final_step)
        logging.info("Eval of %s (step %d): top-1 %.2f%%, top-5 %.2f%%, loss %.4f on %d images", path, step,
                     100 * metrics["top1"], 100 * metrics["top5"], metrics["loss"], int(metrics["examples"]))
        return {**metrics, "step": float(step)}

    try:
        if not continuous:
            return run_one(run.checkpoint(checkpoint))
        last: dict[str, float] | None = None
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
