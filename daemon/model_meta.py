"""Model metadata sidecars: ``<model file>.json`` next to every model and engine."""

import hashlib
import json
import os

# Classes 0-9 are the digits; models trained with marks (engine_build.marks) have an 11th,
# "not a digit", for lines, corners, blobs and texture that sit where a digit could be;
# models trained with meter digits (engine_build.meter_digits) a 12th, "digit in
# transition", for a counter drum caught half-way between two digits.
REJECT_CLASS = 10
TRANSITION_CLASS = 11
LABELS = [str(digit) for digit in range(10)] + ["not a digit", "digit in transition"]


def labels_for(classes):
    """The labels of a model with ``classes`` outputs (10: digits only, 11: with reject,
    12: with reject and transition)."""
    if classes not in (10, 11, 12):
        raise ModelMetadataError("a digit model has 10, 11 or 12 outputs, this one has %d" % classes)
    return LABELS[:classes]


class ModelMetadataError(Exception):
    """A sidecar is missing, unreadable, or does not match its model."""


def sidecar_path(model_path):
    """``models/digits.onnx`` -> ``models/digits.onnx.json``."""
    return str(model_path) + ".json"


def int8_model_path(onnx_path):
    """``models/digits.onnx`` -> ``models/digits.int8.onnx``: where ``engine_build.quantize``
    writes a model's int8 copy and the ONNX Runtime backend looks for it."""
    stem, extension = os.path.splitext(str(onnx_path))
    return stem + ".int8" + extension


def sha256_of(path):
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read(model_path):
    """Return the sidecar dict of ``model_path``."""
    path = sidecar_path(model_path)
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelMetadataError("cannot read model metadata %s: %s" % (path, exc)) from exc


def write(model_path, metadata):
    """Write ``metadata`` as the sidecar of ``model_path`` (stable key order)."""
    path = sidecar_path(model_path)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(metadata, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return path
