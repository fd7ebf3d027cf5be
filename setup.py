import os
import sys

from setuptools import setup

# The build description sits beside the package (cffi loads it by path too).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "fastshm"))
from _build import ext_modules  # noqa: E402

setup(cffi_modules=["src/fastshm/_build.py:ffibuilder"], ext_modules=ext_modules())
