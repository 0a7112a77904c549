"""Read the MNIST IDX files (gzipped or raw) and verify their checksums.

Search order for the data folder: ``--data-dir`` argument, ``$MNIST_DIR``,
``./data/mnist``, ``../shared/data/mnist`` (relative to the project root).
"""

import gzip
import hashlib
import logging
import os
import struct
import sys
import urllib.request
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# SHA-256 of the *uncompressed* IDX files as published by LeCun, Cortes and Burges.
EXPECTED_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
DOWNLOAD_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)


class MnistDataError(Exception):
    """A MNIST file is missing, truncated, corrupt or has the wrong checksum."""


def candidate_dirs(data_dir=None):
    """Folders searched for the MNIST files, in order of preference."""
    candidates = []
    if data_dir:
        candidates.append(Path(data_dir))
    if os.environ.get("MNIST_DIR"):
        candidates.append(Path(os.environ["MNIST_DIR"]))
    candidates.append(Path.cwd() / "data" / "mnist")
    candidates.append(PROJECT_ROOT / "data" / "mnist")
    candidates.append(PROJECT_ROOT.parent / "shared" / "data" / "mnist")
    return candidates


def find_data_dir(data_dir=None):
    """Return the first folder that holds the MNIST test images, else raise."""
    if data_dir:
        # An explicit choice is never silently replaced by another folder.
        return Path(data_dir)
    for folder in candidate_dirs():
        if any((folder / name).exists() for name in _file_variants("t10k-images-idx3-ubyte")):
            return folder
    searched = ", ".join(str(p) for p in candidate_dirs())
    raise MnistDataError(
        "MNIST not found; searched %s. Set --data-dir or MNIST_DIR, or run `make data`." % searched
    )


def _file_variants(name):
    return (name + ".gz", name)


def read_verified_bytes(folder, name):
    """Return the uncompressed bytes of ``name`` (``.gz`` or raw) after checking its SHA-256."""
    folder = Path(folder)
    expected = EXPECTED_SHA256[name]
    path = next((folder / v for v in _file_variants(name) if (folder / v).exists()), None)
    if path is None:
        raise MnistDataError(
            "%s: missing in %s (expected %s.gz or %s, sha256 of content %s)"
            % (name, folder, name, name, expected)
        )
    try:
        if path.suffix == ".gz":
            with gzip.open(str(path), "rb") as handle:
                content = handle.read()
        else:
            content = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise MnistDataError(
            "%s: cannot read (%s); expected uncompressed sha256 %s" % (path, exc, expected)
        ) from exc
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise MnistDataError(
            "%s: checksum mismatch, sha256 of content is %s, expected %s (truncated or wrong file?)"
            % (path, actual, expected)
        )
    return content


def parse_idx(content, expected_magic, source="IDX data"):
    """Parse IDX bytes into a uint8 array, checking the magic number and size."""
    if len(content) < 8:
        raise MnistDataError("%s: too short for an IDX header (%d bytes)" % (source, len(content)))
    magic, count = struct.unpack(">II", content[:8])
    if magic != expected_magic:
        raise MnistDataError("%s: wrong magic number %d, expected %d" % (source, magic, expected_magic))
    dims = [count]
    header = 8
    if expected_magic == IMAGES_MAGIC:
        if len(content) < 16:
            raise MnistDataError("%s: truncated image header" % source)
        dims += list(struct.unpack(">II", content[8:16]))
        header = 16
    expected_len = header + int(np.prod(dims))
    if len(content) != expected_len:
        raise MnistDataError(
            "%s: %d bytes, expected %d for shape %s" % (source, len(content), expected_len, dims)
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def load_split(split, data_dir=None):
    """Load ``train`` or ``test`` as (images uint8 [N,28,28], labels uint8 [N])."""
    folder = find_data_dir(data_dir)
    images_name, labels_name = SPLIT_FILES[split]
    images = parse_idx(read_verified_bytes(folder, images_name), IMAGES_MAGIC, images_name)
    labels = parse_idx(read_verified_bytes(folder, labels_name), LABELS_MAGIC, labels_name)
    if len(images) != len(labels):
        raise MnistDataError("%s: %d images but %d labels" % (split, len(images), len(labels)))
    return images, labels


def download(target_dir, mirrors=DOWNLOAD_MIRRORS):
    """Download the four official files into ``target_dir`` with a progress bar."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in EXPECTED_SHA256:
        destination = target / (name + ".gz")
        if destination.exists():
            try:
                read_verified_bytes(target, name)
                print("%s: present and verified" % destination)
                continue
            except MnistDataError:
                destination.unlink()
        errors = []
        for mirror in mirrors:
            try:
                _download_file(mirror + name + ".gz", destination)
                read_verified_bytes(target, name)
                break
            except (OSError, MnistDataError) as exc:
                errors.append("%s: %s" % (mirror, exc))
                if destination.exists():
                    destination.unlink()
        else:
            raise MnistDataError("could not download %s: %s" % (name, "; ".join(errors)))


def _download_file(url, destination):
    from tqdm import tqdm

    partial = destination.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0)
        with open(str(partial), "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=destination.name
        ) as bar:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    partial.replace(destination)


def main(argv=None):
    """``python -m engine_build.mnist download|verify [--data-dir DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", choices=("download", "verify"))
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT / "data" / "mnist"))
    args = parser.parse_args(argv)
    try:
        if args.action == "download":
            download(args.data_dir)
        for split in SPLIT_FILES:
            images, _ = load_split(split, args.data_dir)
            print("%s: %d images verified in %s" % (split, len(images), args.data_dir))
    except MnistDataError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
