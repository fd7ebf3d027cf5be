from setuptools import setup

setup(cffi_modules=["src/fastshm/_build.py:ffibuilder"])
