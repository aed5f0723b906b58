"""Choosing the tf.distribute strategy for the hardware at hand, and setting the precision policy.

Which policy and whether XLA follow from the device type (`hparams.precision_policy`, `hparams.use_xla`);
this module creates the strategy and applies them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import split_batch

STRATEGY_KINDS = ("auto", "tpu", "mirrored", "multi_worker", "one_device", "default")
TPU_CONNECT_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
    """A strategy with the facts the training loop needs about it."""

    strategy: tf.distribute.Strategy
    kind: str  # one of STRATEGY_KINDS but "auto"
    device_type: str  # "CPU", "GPU" or "TPU"
    num_replicas: int
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True

    @property
    def num_local_replicas(self) -> int:
        """Replicas driven by this process."""
        return self.num_replicas // self.num_workers

    def describe(self) -> str:
        """One line for the logs."""
        workers = f", worker {self.worker_index} of {self.num_workers}" if self.num_workers > 1 else ""
        return f"{self.kind} strategy: {self.num_replicas} {self.device_type} replica(s){workers}"


def _tf_config() -> dict[str, Any] | None:
    """The parsed TF_CONFIG environment variable, or None."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict):
        raise UserError('TF_CONFIG must be a JSON object with a "cluster" mapping and a "task"')
    return value


def _cluster_size(tf_config: dict[str, Any] | None) -> int:
    """How many chief and worker tasks TF_CONFIG names."""
    if not tf_config:
        return 0
    cluster = tf_config["cluster"]
    return sum(len(cluster.get(job, []) or []) for job in ("chief", "worker"))


def split_cpu(num_devices: int) -> None:
    """Split the host CPU into `num_devices` logical devices (to run multi-replica code without GPUs)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != num_devices:
            raise UserError(
                f"cannot split the CPU into {num_devices} devices after TensorFlow started ({current} now)"
            ) from None


def _check_tpu_address(tpu: str) -> None:
    """Fail fast with one line when a grpc:// TPU address does not answer."""
    if not tpu.startswith("grpc://"):
        return
    host, _, port = tpu[len("grpc://") :].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    except (OSError, ValueError) as error:
        raise UserError(f"cannot reach the TPU at {tpu}: {error}; check --tpu and the network") from None


def _connect_tpu(tpu: str) -> tf.distribute.Strategy:
    """Resolve, connect to and initialise a TPU system; a UserError when that fails or hangs."""
    _check_tpu_address(tpu)
    result: dict[str, Any] = {}

    def connect() -> None:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            if tpu != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            result["strategy"] = tf.distribute.TPUStrategy(resolver)
        except Exception as error:  # noqa: BLE001 - any failure here means "no usable TPU"
            result["error"] = error

    # Resolution can retry for minutes (metadata server, gRPC); bound it.
    thread = threading.Thread(target=connect, daemon=True, name="tpu-connect")
    thread.start()
    thread.join(TPU_CONNECT_TIMEOUT_S)
    if thread.is_alive():
        raise UserError(f"no answer from the TPU {tpu!r} within {TPU_CONNECT_TIMEOUT_S:.0f} s; check --tpu")
    if "error" in result:
        detail = str(result["error"]).strip().splitlines()
        raise UserError(f"cannot use the TPU {tpu!r}: {detail[0] if detail else type(result['error']).__name__}")
    return result["strategy"]


def create_strategy(
    kind: str = "auto",
    *,
    tpu: str | None = None,
    num_gpus: int | None = None,
    cpu_devices: int = 1,
) -> StrategyInfo:
    """Create the strategy: TPU when `tpu` is given, multi-worker with TF_CONFIG, mirrored for
    several GPUs (or `cpu_devices` > 1 logical CPUs), one device for one GPU, else the default.
    """
    if kind not in STRATEGY_KINDS:
        raise UserError(f"unknown strategy {kind!r}; use one of {', '.join(STRATEGY_KINDS)}")
    if cpu_devices < 1:
        raise UserError(f"--cpu_devices must be at least 1, got {cpu_devices}")
    tf_config = _tf_config()
    gpus = tf.config.list_physical_devices("GPU")
    if num_gpus is not None:
        if num_gpus < 0:
            raise UserError(f"--num_gpus must be >= 0, got {num_gpus}")
        if num_gpus > len(gpus):
            raise UserError(f"--num_gpus={num_gpus} but this machine has {len(gpus)} GPU(s)")
        gpus = gpus[:num_gpus]
    if kind == "auto":
        if tpu:
            kind = "tpu"
        elif _cluster_size(tf_config) > 1:
            kind = "multi_worker"
        elif len(gpus) > 1 or (not gpus and cpu_devices > 1):
            kind = "mirrored"
        elif len(gpus) == 1:
            kind = "one_device"
        else:
            kind = "default"
    if kind == "tpu" and not tpu:
        raise UserError("--strategy=tpu needs --tpu (a TPU name, grpc://host:port, or local)")
    if tpu and kind != "tpu":
        raise UserError(f"--tpu was given but --strategy={kind}; drop one of them")

    if kind == "tpu":
        strategy = _connect_tpu(tpu)
        info = StrategyInfo(strategy, "tpu", "TPU", strategy.num_replicas_in_sync)
    elif kind == "multi_worker":
        if _cluster_size(tf_config) < 1:
            raise UserError("--strategy=multi_worker needs TF_CONFIG naming the cluster and this task")
        if not gpus and cpu_devices > 1:
            split_cpu(cpu_devices)
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        resolver = strategy.cluster_resolver
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        cluster = resolver.cluster_spec().as_dict()
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        index = task_id + (len(cluster.get("chief", [])) if task_type == "worker" else 0)
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
        info = StrategyInfo(strategy, "multi_worker", "GPU" if gpus else "CPU", strategy.num_replicas_in_sync,
                            num_workers=workers, worker_index=index, is_chief=is_chief)
    elif kind == "mirrored":
        if gpus:
            devices = [f"/gpu:{i}" for i in range(len(gpus))]
            device_type = "GPU"
        else:
            split_cpu(cpu_devices)
            devices = [f"/cpu:{i}" for i in range(cpu_devices)]
            device_type = "CPU"
        strategy = tf.distribute.MirroredStrategy(devices)
        info = StrategyInfo(strategy, "mirrored", device_type, strategy.num_replicas_in_sync)
    elif kind == "one_device":
        device = "/gpu:0" if gpus else "/cpu:0"
        strategy = tf.distribute.OneDeviceStrategy(device)
        info = StrategyInfo(strategy, "one_device", "GPU" if gpus else "CPU", 1)
    else:
        strategy = tf.distribute.get_strategy()
        info = StrategyInfo(strategy, "default", "GPU" if gpus else "CPU", 1)
    logging.info("Using %s", info.describe())
    return info


def check_batch_size(global_batch: int, info: StrategyInfo, what: str = "--batch_size") -> int:
    """The per-replica batch size on this strategy's replicas (hparams.split_batch)."""
    return split_batch(global_batch, info.num_replicas, what)


def set_precision(policy: str) -> None:
    """Set the global Keras dtype policy before models are built."""
    keras.mixed_precision.set_global_policy(policy)


def compile_replica_step(step_fn: Any, info: StrategyInfo) -> Any:
    """`step_fn` compiled with XLA, for `strategy.run`.

    Under MirroredStrategy (and multi-worker) two rules hold. The compiled function must not contain a
    cross-replica synchronisation (the optimizer's gradient all-reduce, the batch-norm all-reduce):
    `merge_call` cannot run inside a nested tf.function, so the training loop compiles only the forward
    and backward pass there. And the compiled call is pinned to its replica's own device: without that,
    a compiled call inside `strategy.run` in a tf.function is placed on the first device, and XLA cannot
    reach the other replicas' variables ("Trying to access resource .../replica_1/... located in device
    CPU:1 from device CPU:0", XLA's "tf.Variable on a different device" limit).
    """
    compiled = tf.function(step_fn, jit_compile=True)
    if info.kind not in ("mirrored", "multi_worker"):
        return compiled

    def on_replica_device(*args: Any) -> Any:
        device = tf.distribute.get_replica_context().devices[0]
        while isinstance(device, (list, tuple)):  # MirroredStrategy lists a replica's devices
            device = device[0]
        with tf.device(device):
            return compiled(*args)

    return on_replica_device
