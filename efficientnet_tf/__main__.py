"""`python -m efficientnet_tf`: the command line (same as main.py and the efficientnet-tf script)."""

from efficientnet_tf.cli import run

run()
