"""Property-based fuzzing: the config loader and image decoding never crash, whatever comes in."""

import json
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import config
from daemon.predict import ImageError, decode_image
from tests.helpers import run_cli

PATH = r"(?:[A-Za-z_]\w*|\[[^\]]*\])(?:\.[A-Za-z_]\w*|\[[^\]]*\])*"
ERROR_LINE = re.compile(r"^(?:%s|\(top level\)): .+$" % PATH, re.S)
KEYS = list(config.SCHEMA.fields) + ["sorce", "mqt", "", "0", "roi.size"]
SECTION_KEYS = sorted(
    {k for f in config.SCHEMA.fields.values() if isinstance(f, config.Schema) for k in f.fields}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["${DIGITD_FUZZ_UNSET}", "${HOME}", "otsu", "file", "-1", "1e309"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(SECTION_KEYS + ["x"]), inner, max_size=5)
    ),
    max_leaves=12,
)
documents = st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=6))


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_config_loader_only_ever_raises_config_error_with_paths(document):
    try:
        config.from_dict(document)
    except config.ConfigError as error:
        assert error.errors
        for line in error.errors:
            assert ERROR_LINE.match(line), line


@settings(max_examples=12, deadline=None)
@given(st.one_of(st.text(max_size=200), documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True))))
def test_check_config_cli_exits_0_or_78_without_traceback(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    result = run_cli("check-config", "-c", path)
    assert result.returncode in (0, 78), result.stderr
    assert "Traceback" not in result.stderr


def png_bytes(width, height, depth=8, colour=0, payload=b""):
    """A PNG with any header, valid CRCs, and an arbitrary (often wrong) IDAT payload."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(payload))
        + chunk(b"IEND", b"")
    )


def valid_images():
    rng = np.random.default_rng(3)
    gray = (rng.random((60, 50)) * 255).astype(np.uint8)
    images = [
        cv2.imencode(".png", gray)[1].tobytes(),
        cv2.imencode(".jpg", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))[1].tobytes(),
        cv2.imencode(".png", (gray.astype(np.uint16) * 257))[1].tobytes(),
        cv2.imencode(".png", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA))[1].tobytes(),
        cv2.imencode(".bmp", gray)[1].tobytes(),
    ]
    return images


def read(reader, data):
    try:
        result = reader.read_still(decode_image(data))
    except ImageError as error:
        assert str(error)
        return None
    json.dumps(result)
    assert set(result) == {"number", "digits"}
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=3000),
        st.sampled_from(valid_images()).flatmap(lambda d: st.integers(0, len(d)).map(lambda n: d[:n])),
        st.sampled_from(valid_images()).flatmap(
            lambda d: st.lists(st.tuples(st.integers(0, len(d) - 1), st.integers(0, 255)), max_size=8).map(
                lambda edits: bytes(_apply(d, edits))
            )
        ),
        st.builds(
            png_bytes,
            st.integers(0, 2**31 - 1),
            st.integers(0, 2**31 - 1),
            st.sampled_from([1, 8, 16]),
            st.sampled_from([0, 2, 4, 6]),
            st.binary(max_size=200),
        ),
    )
)
def test_any_bytes_give_a_reading_or_a_clear_error(reader, data):
    read(reader, data)


def _apply(data, edits):
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return out


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_bytes(60000, 60000, payload=b"\x00" * 1000)
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_image(bomb)
    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_image(bytes(jpeg))


@pytest.mark.parametrize("index", range(5), ids=["png", "jpeg", "png16", "rgba", "bmp"])
def test_every_supported_format_and_depth_reads(reader, index):
    assert read(reader, valid_images()[index]) is not None
