"""MNIST loader: checksums, truncation, magic numbers, search order."""

import gzip
import shutil
import struct

import numpy as np
import pytest

from engine_build import mnist


def _copy_dataset(target):
    source = mnist.find_data_dir()
    for name in mnist.EXPECTED_SHA256:
        shutil.copy(str(source / (name + ".gz")), str(target / (name + ".gz")))
    return target


def test_loads_both_splits_with_expected_shapes(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_raw_files_are_read_like_gzipped_ones(tmp_path, mnist_test):
    source = mnist.find_data_dir()
    for name in mnist.SPLIT_FILES["test"]:
        with gzip.open(str(source / (name + ".gz"))) as handle:
            (tmp_path / name).write_bytes(handle.read())
    images, labels = mnist.load_split("test", tmp_path)
    assert np.array_equal(images, mnist_test[0]) and np.array_equal(labels, mnist_test[1])


def test_wrong_content_names_file_and_expected_checksum(tmp_path):
    _copy_dataset(tmp_path)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(str(target)) as handle:
        content = bytearray(handle.read())
    content[100] ^= 0xFF
    with gzip.open(str(target), "wb") as handle:
        handle.write(bytes(content))
    with pytest.raises(mnist.MnistDataError) as error:
        mnist.load_split("test", tmp_path)
    message = str(error.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert mnist.EXPECTED_SHA256["t10k-labels-idx1-ubyte"] in message


def test_truncated_gzip_is_a_clear_error(tmp_path):
    _copy_dataset(tmp_path)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:5000])
    with pytest.raises(mnist.MnistDataError) as error:
        mnist.load_split("test", tmp_path)
    assert "t10k-images-idx3-ubyte" in str(error.value)
    assert mnist.EXPECTED_SHA256["t10k-images-idx3-ubyte"] in str(error.value)


def test_missing_file_names_it(tmp_path):
    _copy_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(mnist.MnistDataError, match="t10k-labels-idx1-ubyte: missing"):
        mnist.load_split("test", tmp_path)


def test_wrong_magic_and_size_are_rejected_by_the_parser():
    labels = struct.pack(">II", mnist.LABELS_MAGIC, 3) + b"\x01\x02\x03"
    assert mnist.parse_idx(labels, mnist.LABELS_MAGIC).tolist() == [1, 2, 3]
    with pytest.raises(mnist.MnistDataError, match="wrong magic number 2049, expected 2051"):
        mnist.parse_idx(labels, mnist.IMAGES_MAGIC, "x")
    with pytest.raises(mnist.MnistDataError, match="expected 11"):
        mnist.parse_idx(labels[:-1], mnist.LABELS_MAGIC, "x")


def test_mnist_dir_environment_variable_is_searched_first(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert mnist.find_data_dir() == tmp_path


def test_explicit_data_dir_without_files_fails_instead_of_searching(tmp_path):
    with pytest.raises(mnist.MnistDataError, match="missing in %s" % tmp_path):
        mnist.load_split("test", tmp_path)
