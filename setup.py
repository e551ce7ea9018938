import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "pocketnas", "version.py"), encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

CONFIG_PACKAGES = {"pocketnas.search_spaces": "search_spaces",
                   "pocketnas.search_spaces.recipes": "search_spaces/recipes",
                   "pocketnas.train": "train", "pocketnas.eval": "eval"}

setup(
    name="pocketnas",
    version=VERSION,
    description="Search, build, distil, compress and evaluate extremely compact face recognition networks "
                "(PocketNet-style)",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # the declarative configurations live at the project's top level and ship inside the package
    packages=find_packages(include=["pocketnas", "pocketnas.*"]) + list(CONFIG_PACKAGES),
    package_dir={"pocketnas": "pocketnas", **CONFIG_PACKAGES},
    package_data={"pocketnas": ["assets/orl/*.txt", "assets/orl/*.ORL", "assets/orl/*.json",
                                "assets/orl/s*/*.png", "assets/weights/*.pt", "assets/detector/*.pt",
                                "assets/detector/*.txt"],
                  **{name: ["*.yaml"] for name in CONFIG_PACKAGES}},
    # eval/shared.yaml points at ../shared beside a checkout: it means nothing in an installed package
    exclude_package_data={"pocketnas.eval": ["shared.yaml"]},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "Pillow",
        "matplotlib",
    ],
    extras_require={
        "onnx": ["onnx", "onnxruntime"],
        "dev": ["pytest", "pytest-xdist", "onnx", "onnxruntime", "ruff"],
    },
    entry_points={"console_scripts": ["pocketnas=pocketnas.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
