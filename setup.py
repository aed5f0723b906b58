"""Packaging for efficientnet-tf."""

from setuptools import find_packages, setup

setup(
    name="efficientnet-tf",
    version="0.1.0",
    description="EfficientNet (compound-scaled CNNs) training, evaluation and export on TensorFlow / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["efficientnet_tf", "efficientnet_tf.*", "hparams", "hparams.*", "data", "data.*", "export", "export.*"]),
    py_modules=["main"],
    include_package_data=True,
    package_data={
        "hparams": ["*.yaml", "**/*.yaml"],
        "data": ["imagenette_mini/*", "imagenette_mini/**/*"],
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
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["efficientnet-tf=main:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
