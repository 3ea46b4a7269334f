"""compact-flax: Compact Transformers (CCT, CVT, ViT-Lite) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name='compact-flax',
    version='0.1.0',
    description='Compact Transformers (CCT, CVT, ViT-Lite) in JAX/Flax, with the official '
                'checkpoints and training recipe.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['compact_flax', 'compact_flax.*']),
    package_data={'compact_flax': ['data/*.csv.gz']},
    py_modules=['train_main', 'convert_torch_weights'],
    install_requires=[
        'absl-py',
        'filelock',  # JAX's size limit on the compilation cache
        'flax>=0.10',
        'jax>=0.5',
        'ml-collections',
        'numpy',
        'optax',
        'orbax-checkpoint',
        'pillow',
        'tensorboardX',
    ],
    extras_require={
        # PyTorch only reads .pth files; install your own build first to avoid a CUDA download.
        'convert': ['torch>=2.0'],
        'test': ['chex', 'pillow', 'pytest', 'pytest-xdist>=3.2'],
        # TFDS datasets and image folders (tf.data); the models and trainer do not need it.
        'data': ['tensorflow-cpu', 'tensorflow-datasets'],
        # XLA's TPU compiler (libtpu), for benchmarks/compile_tpu.py on any Linux host; install the
        # jax version you have: pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"
        'tpu': ['jax[tpu]'],
    },
    license='Apache-2.0',
)
