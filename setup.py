"""Package discovery that pyproject.toml cannot express: `schemas/` stays at the repo top and
ships inside the package as `ling_convert/_schemas/` (found with importlib.resources)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ling_convert", "ling_convert.*"]), "ling_convert._schemas"],
    package_dir={"ling_convert._schemas": "schemas"},
    package_data={"ling_convert._schemas": ["**/*.json"]},
)
