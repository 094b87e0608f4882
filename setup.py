"""espnet_omnirouter: Switch and Omni-router Mixture-of-Experts encoders for ESPnet ASR."""
from setuptools import find_packages, setup

# Pinned, tested together on Python 3.11.  ESPnet 202511 pins setuptools<74 and imports
# torchaudio from espnet2.tasks.asr without declaring it, so the matched torch/torchaudio
# pair is pinned here.
install_requires = [
    "espnet==202511",
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "setuptools<74",
    "sentencepiece",
    "espnet_model_zoo",
    "jiwer",
    "soundfile",
    # espnet's defaults --use_tensorboard true / --use_matplotlib true need these
    "tensorboard",
    "matplotlib",
]

setup(
    name="espnet_omnirouter",
    version="0.1.0",
    description="Switch and Omni-router Mixture-of-Experts encoders for ESPnet ASR",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["espnet_omnirouter", "espnet_omnirouter.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=install_requires,
    extras_require={
        "test": ["pytest", "hypothesis"],
        "plot": ["matplotlib"],
    },
    license="Apache-2.0",
)
