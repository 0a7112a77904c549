"""The Jetson Nano budget: this host's CPU ms per frame scaled to one Cortex-A57 core.

An estimate, not a measurement. The scale is the ratio of single-core 7-Zip LZMA ratings
(``7z b -mmt1``, the "R/U" column: MIPS per 100 % of one core, so time this shared host
gives to other jobs does not count): this host's measured here, the Nano's from a public
sbc-bench run (cited in ``NANO_SOURCE``). 7-Zip is integer, branchy code much like the
Python interpreter; OpenCV's SIMD kernels (AVX2/AVX-512 here, 128-bit NEON there) and the
Nano's Python 3.6 (slower than this host's 3.11) make the Nano slower still, so read the
estimate as a lower bound of the Nano's cost.
"""

import re
import shutil
import subprocess

FRAME_MS = 1000.0 / 30
NANO_CORES = 4
# Jetson Nano (4x Cortex-A57 at 1428 MHz, L4T 32 / Ubuntu 18.04, p7zip 16.02): "R/U" of the
# three 4-thread runs 1454, 1454, 1447 (a run at 99 % of one core: 1480).
NANO_RATING_PER_CORE = 1454.0
NANO_SOURCE = (
    "sbc-bench v0.6.7 on a Jetson Nano, 2019-05-04: http://ix.io/1I4j "
    "(archived in github.com/ThomasKaiser/sbc-bench, results/1I4j.txt)"
)
SEVEN_ZIP_BINARIES = ("7zz", "7z", "7za")


def host_rating_per_core(timeout=300):
    """This host's 7-Zip LZMA rating per 100 % of one core (``7z b -mmt1``, "Tot" R/U), or None."""
    binary = next((shutil.which(name) for name in SEVEN_ZIP_BINARIES if shutil.which(name)), None)
    if binary is None:
        return None
    output = subprocess.run(
        [binary, "b", "-mmt1"], capture_output=True, text=True, timeout=timeout, check=True
    ).stdout
    return parse_total_rating_per_core(output)


def parse_total_rating_per_core(output):
    """The R/U figure of the ``Tot:`` line of 7-Zip's benchmark output (usage, R/U, rating)."""
    match = re.search(r"^Tot:\s+\d+\s+(\d+)\s+\d+\s*$", output, re.MULTILINE)
    return float(match.group(1)) if match else None


def scale(host_rating):
    """{host_rating_per_core, nano_rating_per_core, slower, source}: how many times one A57
    core is slower than one core here (None when 7-Zip is not installed)."""
    return {
        "host_rating_per_core": host_rating,
        "nano_rating_per_core": NANO_RATING_PER_CORE,
        "nano_slower": round(host_rating / NANO_RATING_PER_CORE, 2) if host_rating else None,
        "source": NANO_SOURCE,
        "method": "7-Zip LZMA benchmark, single-core R/U ratings; an estimate, not a measurement",
    }


def budget_row(label, host_ms, slower, capture_thread_ms=None):
    """One row: host ms, the Nano estimate on one core and what it leaves of a 33 ms frame."""
    nano_ms = host_ms * slower
    row = {
        "work": label,
        "host_cpu_ms_per_frame": round(host_ms, 2),
        "nano_ms_one_core": round(nano_ms, 1),
        "left_of_frame_ms": round(FRAME_MS - nano_ms, 1),
        "share_of_four_cores_percent": round(100.0 * nano_ms / (NANO_CORES * FRAME_MS), 1),
    }
    if capture_thread_ms is not None:
        row["nano_capture_thread_ms"] = round(capture_thread_ms * slower, 1)
        row["left_with_gpu_inference_ms"] = round(FRAME_MS - capture_thread_ms * slower, 1)
    return row


def budget(modes, frame_sizes, slower):
    """Rows for the ROI modes (bench.modes) and the frame sizes (pipeline runs, centre ROI)."""
    rows = []
    for mode, row in (modes or {}).items():
        rows.append(
            dict(
                budget_row(
                    "%s, 1280x720" % mode, row["cpu_ms_per_frame"], slower, row["prepare_ms_per_frame"]
                ),
                kind="mode",
            )
        )
    for row in frame_sizes:
        rows.append(
            dict(
                budget_row(
                    "centre, %dx%d (whole process, decode %.2f ms included)"
                    % (row["frame_size"][0], row["frame_size"][1], row.get("decode_ms_per_frame", 0.0)),
                    row["cpu_ms_per_frame"],
                    slower,
                ),
                kind="frame size",
            )
        )
    return rows


def markdown(nano, rows, commit):
    """The budget table, ready to paste."""
    if not nano["nano_slower"]:
        return "No 7-Zip here (apt-get install 7zip): no single-core ratio, no Nano estimate.\n"
    lines = [
        "Estimate, not a measurement (commit %s). One Cortex-A57 core taken as %.2fx slower than one "
        "core of this host: 7-Zip LZMA single-core ratings, %.0f MIPS here (measured in this run) "
        "vs %.0f on the Nano (%s). Integer code like the Python interpreter; OpenCV's SIMD kernels "
        "and the Nano's Python 3.6 are slower still there, so these are lower bounds."
        % (
            commit,
            nano["nano_slower"],
            nano["host_rating_per_core"],
            nano["nano_rating_per_core"],
            nano["source"],
        ),
        "",
        "Cores: a camera's ROI and preprocessing work runs in its one capture thread, so the "
        "estimate puts the whole frame's work on **one** A57 core (`left of 33.3 ms`: what that "
        "core has to spare at 30 fps; negative means the camera cannot keep 30 fps). The share "
        "of all four cores is the same work spread over 4 x 33.3 ms. On the Nano the classifier "
        "runs on the GPU (TensorRT): the capture-thread column leaves ONNX Runtime inference out, "
        "and the last column is what the capture core has to spare then.",
        "",
        "| work per frame | CPU ms here | Nano ms, one A57 core | of which capture thread | "
        "left of 33.3 ms | share of 4 cores | left of 33.3 ms, inference on the GPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            "| %s | %.2f | %.1f | %s | %.1f | %.0f %% | %s |"
            % (
                row["work"],
                row["host_cpu_ms_per_frame"],
                row["nano_ms_one_core"],
                "%.1f" % row["nano_capture_thread_ms"] if "nano_capture_thread_ms" in row else "-",
                row["left_of_frame_ms"],
                row["share_of_four_cores_percent"],
                "%.1f" % row["left_with_gpu_inference_ms"] if "left_with_gpu_inference_ms" in row else "-",
            )
        )
    return "\n".join(lines) + "\n"
