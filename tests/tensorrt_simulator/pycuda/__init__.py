"""Simulated pycuda package (tests only): see tests/tensorrt_simulator/README.md."""

VERSION = (2022, 1)
VERSION_TEXT = "2022.1-simulator"
