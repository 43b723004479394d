from setuptools import find_packages, setup

setup(
    name="resnext_jax",
    version="0.1.0",
    description="ResNeXt and SE-ResNeXt in JAX / Flax: backbones, ported weights, training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["resnext_jax", "resnext_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.9",
        "ml-collections>=0.1.1",
        "tensorflow-datasets>=4.9.6",
        # tf.data only: the CPU build keeps TensorFlow off the accelerators.
        "tensorflow-cpu>=2.16; platform_system == 'Linux'",
        "tensorflow>=2.16; platform_system != 'Linux'",
        "numpy>=1.26",
        # extract.py (images, progress) and viz.py (figures)
        "Pillow>=9.1",
        "tqdm>=4.64",
        "matplotlib>=3.7",
        # train/: TensorBoard + logging writers; data/: the embedded digits dataset, and
        # importlib_resources, which TFDS (etils) needs to register a local builder
        "clu>=0.0.10",
        "tensorboard>=2.16",
        "scikit-learn>=1.2",
        "importlib_resources>=5.10",
        # weights/: PyTorch checkpoints without torch, and Hugging Face Hub ids
        "safetensors>=0.4.3",
        "huggingface_hub>=0.23",
    ],
    extras_require={
        # reading .pth / .bin checkpoints (torch.load(weights_only=True)); never needed at run time
        "torch": ["torch>=2.1"],
        "test": ["pytest>=8", "ruff>=0.6",
                 # tests/test_notebooks.py runs the notebooks headless
                 "nbclient>=0.7", "nbformat>=5.7", "ipykernel>=6"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
