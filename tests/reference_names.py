"""Variable names of tensorflow/tpu EfficientNet checkpoints, written out from the reference's block table
(efficientnet_builder.py / efficientnet_lite_builder.py and efficientnet_model.py), independently of the
library's own mapping, so that tests that write reference-style checkpoints do not reuse the code they test.

Reference naming, per block i (in order over all stages): `blocks_i/` then, when the block expands,
`conv2d` + `tpu_batch_normalization` (expansion), `depthwise_conv2d` + the next batch norm, `se/conv2d`
and `se/conv2d_1` (not in Lite), and the next `conv2d_*` + batch norm (projection).
"""

from __future__ import annotations

import math

# The reference's seven block strings: (expand ratio, repeats) of r1_k3_s11_e1 ... r1_k3_s11_e6.
STAGES = ((1, 1), (6, 2), (6, 2), (6, 3), (6, 3), (6, 4), (6, 1))
# Depth coefficients of the reference builders.
DEPTH = {
    **{f"efficientnet-b{i}": d for i, d in enumerate((1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1, 3.6))},
    "efficientnet-l2": 5.3,
    **{f"efficientnet-lite{i}": d for i, d in enumerate((1.0, 1.1, 1.2, 1.4, 1.8))},
}
BN = ["gamma", "beta", "moving_mean", "moving_variance"]


def block_repeats(depth: float, lite: bool) -> list[int]:
    """Blocks per stage: ceil(depth · repeats); Lite keeps its first and last stage at one block."""
    return [r if lite and s in (0, len(STAGES) - 1) else int(math.ceil(depth * r)) for s, (_, r) in enumerate(STAGES)]


def reference_layers(variant: str, depth: float | None = None) -> list[tuple[str, str, list[str]]]:
    """(our keras.applications-style layer name, reference scope, variable names in Keras weight order)."""
    lite = "lite" in variant
    depth = DEPTH[variant] if depth is None else depth
    rows = [("stem_conv", "stem/conv2d", ["kernel"]), ("stem_bn", "stem/tpu_batch_normalization", BN)]
    index = 0
    for stage, repeats in enumerate(block_repeats(depth, lite)):
        expand = STAGES[stage][0] != 1
        for j in range(repeats):
            ours, scope = f"block{stage + 1}{chr(ord('a') + j)}_", f"blocks_{index}"
            bns = iter(["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"])
            convs = iter(["conv2d", "conv2d_1"])
            if expand:
                rows += [(ours + "expand_conv", f"{scope}/{next(convs)}", ["kernel"]),
                         (ours + "expand_bn", f"{scope}/{next(bns)}", BN)]
            rows += [(ours + "dwconv", f"{scope}/depthwise_conv2d", ["depthwise_kernel"]),
                     (ours + "bn", f"{scope}/{next(bns)}", BN)]
            if not lite:
                rows += [(ours + "se_reduce", f"{scope}/se/conv2d", ["kernel", "bias"]),
                         (ours + "se_expand", f"{scope}/se/conv2d_1", ["kernel", "bias"])]
            rows += [(ours + "project_conv", f"{scope}/{next(convs)}", ["kernel"]),
                     (ours + "project_bn", f"{scope}/{next(bns)}", BN)]
            index += 1
    rows += [("top_conv", "head/conv2d", ["kernel"]), ("top_bn", "head/tpu_batch_normalization", BN),
             ("predictions", "head/dense", ["kernel", "bias"])]
    return rows
