"""Install the `phenaki` package: library, trainers' helpers and command-line tools."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="phenaki",
    version="0.1.0",
    description=(
        "Token-based text-to-video: a causal C-ViViT video tokenizer and a "
        "T5-conditioned MaskGIT transformer that turn a story into one video"
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["phenaki", "phenaki.*"]),
    # the demo model ships inside the package, so every install (wheel, sdist, editable) has a default model
    package_data={"phenaki": ["pretrained/*/*", "pretrained/*/*/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "einops>=0.7",
        "vector-quantize-pytorch>=1.14",
        "transformers>=4.40",
        "tokenizers>=0.15",
        "sentencepiece>=0.1.99",
        "accelerate>=0.30",
        "huggingface_hub>=0.23",
        "safetensors>=0.4",
        "av>=11",
        "click>=8.1",
        "webdataset>=0.2.86",
        "pyyaml>=6",
        "packaging>=20",
        "tqdm>=4.60",
        "numpy>=1.24",
        "pillow>=9",
    ],
    extras_require={
        "test": ["pytest>=7.4", "gradio>=5", "playwright>=1.40", "setuptools>=70.1", "matplotlib>=3.7",
                 "tensorboard>=2.14"],
        "plot": ["matplotlib>=3.7"],
        "trackers": ["tensorboard>=2.14"],
        "vision": ["torchvision"],
        "web": ["gradio>=5"],
    },
    entry_points={
        "console_scripts": [
            "phenaki-sample=phenaki.cli:sample_main",
            "phenaki-data=phenaki.cli:data_main",
            "phenaki-eval=phenaki.cli:eval_main",
            "phenaki-web=phenaki.cli:web_main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Multimedia :: Video",
    ],
)
