"""The package is described in pyproject.toml; this file lets tools that still call
``python setup.py`` (and the design card's layout) find it."""

from setuptools import setup

setup()
