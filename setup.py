"""Build and install bbench (pure Python part; see `_extension` below for the kernels)."""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version: dict[str, str] = {}
exec((ROOT / "bbench" / "_version.py").read_text(), version)

setup(
    name="bbench",
    version=version["__version__"],
    description="Benchmark harness for multimodal imbalance learning",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bbench", "bbench.*"]),
    package_data={"bbench": ["config/presets/*.toml", "config/presets/*/*.toml",
                             "data/resources/*/*", "py.typed"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "tabulate",
        "tomli>=1.1; python_version<'3.11'",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark", "pytest-xdist", "hypothesis", "fvcore"],
    },
    entry_points={"console_scripts": ["bbench=bbench.cli:main"]},
)
