"""efficientnet-tf command line (the same program as the `efficientnet-tf` console script).

    python main.py                                   # B0 on the embedded images, a few minutes on a CPU
    python main.py --model=efficientnet-b2 --dataset=imagenet --data_dir=gs://... --tpu=my-tpu
    python main.py --mode=eval|export|predict|summary ...
    python main.py --help                            # every flag

The flags and their mapping to the configuration live in `efficientnet_tf/cli.py`; everything the
command does is a call into `efficientnet_tf.app`, so that tests, benchmarks and studies reach the
same code without going through the command line.
"""

from efficientnet_tf.cli import run

if __name__ == "__main__":
    run()
