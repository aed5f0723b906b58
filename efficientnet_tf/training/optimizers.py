"""RMSProp as the reference recipe's TF1 `tf.compat.v1.train.RMSPropOptimizer` computes it.

Per variable, with gradient g and learning rate lr at the step:

    ms  = rho·ms + (1 − rho)·g²                 (ms starts at 1)
    mom = momentum·mom + lr·g / sqrt(ms + eps)
    w  -= mom

Keras 3 `keras.optimizers.RMSprop` does the same arithmetic (epsilon inside the square root, the
learning rate inside the momentum buffer) but starts the mean square `ms` at 0, so its first
update is about lr·sign(g)/sqrt(1 − rho) ≈ 3.2·lr per weight whatever the gradient's size; from
1, TF1's first updates are about lr·g, much smaller for the small gradients of a deep network,
until `ms` has decayed to the gradients' scale (tens of steps at rho 0.9). Only the initial
value differs, so checkpoints hold the same slots.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class RMSpropTF(keras.optimizers.RMSprop):
    """keras.optimizers.RMSprop with the mean-square accumulator initialised to ones, as TF1's."""

    def build(self, var_list: list[Any]) -> None:
        """Create the slots: velocity (mean square, ones), momentum and average gradient (zeros)."""
        if self.built:
            return
        # Skip RMSprop.build, which would create the velocities with zeros.
        super(keras.optimizers.RMSprop, self).build(var_list)
        self._velocities = self.add_optimizer_variables(var_list, "velocity", initializer="ones")
        self._momentums = self.add_optimizer_variables(var_list, "momentum") if self.momentum > 0 else []
        self._average_gradients = (
            self.add_optimizer_variables(var_list, "average_gradient") if self.centered else []
        )
