"""CPU ms per frame of each ROI mode at an earlier commit and now, in one interleaved run.

    python -m bench.compare --before 364febc [--rounds 5] [--frames 30]

The earlier commit is checked out in a temporary git worktree; each round runs
``bench.modes`` once in a fresh process for each tree, before then after, so a busy moment of
this shared machine lands on both (one BLAS thread in both, see ``measure_in``). Prints JSON and a table: per mode the median over the
rounds, every round's figure, and the ratio now / before.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURE = (
    "import json, sys; sys.path.insert(0, %r); from bench import modes; print(json.dumps(modes.measure(%d)))"
)


def measure_in(tree, frames):
    """{mode: cpu ms per frame} of one fresh process running ``tree``'s bench.modes."""
    from engine_build import mnist

    # the earlier tree sits in a temporary folder, without ../shared beside it. One BLAS
    # thread: numpy.linalg.inv (the grid's warp, before) wakes OpenBLAS threads that spin on
    # the other core afterwards and are billed to whichever mode runs next in the process
    env = dict(os.environ, PYTHONPATH=tree, MNIST_DIR=str(mnist.find_data_dir()), OPENBLAS_NUM_THREADS="1")
    output = subprocess.run(
        [sys.executable, "-c", MEASURE % (tree, frames)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if output.returncode != 0:
        raise RuntimeError("bench.modes failed in %s: %s" % (tree, output.stderr[-2000:]))
    rows = json.loads(output.stdout.strip().splitlines()[-1])
    return {mode: (row["cpu_ms_per_frame"], row["read_right"], row["frames"]) for mode, row in rows.items()}


def compare(before_tree, after_tree, rounds, frames):
    """{mode: {before, after: [ms per round], medians, ratio, read right}} for the modes both have."""
    runs = {"before": [], "after": []}
    for round_index in range(rounds):
        for name, tree in (("before", before_tree), ("after", after_tree)):
            print("  round %d of %d: %s" % (round_index + 1, rounds, name), file=sys.stderr, flush=True)
            runs[name].append(measure_in(tree, frames))
    modes = [m for m in runs["after"][0] if m in runs["before"][0]]
    result = {}
    for mode in modes:
        before = [r[mode][0] for r in runs["before"]]
        after = [r[mode][0] for r in runs["after"]]
        result[mode] = {
            "before_ms": before,
            "after_ms": after,
            "before_median_ms": round(float(np.median(before)), 2),
            "after_median_ms": round(float(np.median(after)), 2),
            "ratio": round(float(np.median(after) / np.median(before)), 2),
            "before_read_right": "%d / %d" % (sum(r[mode][1] for r in runs["before"]), rounds * frames),
            "after_read_right": "%d / %d" % (sum(r[mode][1] for r in runs["after"]), rounds * frames),
        }
    return result


def markdown(result, before, after):
    lines = [
        "| mode (1280x720, every ROI a digit) | before %s, ms (rounds) | now %s, ms (rounds) | now / before "
        "| frames read right, before; now |" % (before, after),
        "| --- | --- | --- | ---: | --- |",
    ]
    for mode, row in result.items():
        lines.append(
            "| %s | %.2f (%s) | %.2f (%s) | %.2f | %s; %s |"
            % (
                mode,
                row["before_median_ms"],
                ", ".join("%.1f" % v for v in row["before_ms"]),
                row["after_median_ms"],
                ", ".join("%.1f" % v for v in row["after_ms"]),
                row["ratio"],
                row["before_read_right"],
                row["after_read_right"],
            )
        )
    return "\n".join(lines)


def git(*args):
    return subprocess.run(
        ["git"] + list(args), cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=30, help="frames per mode and round")
    args = parser.parse_args(argv)
    after = git("rev-parse", "--short", "HEAD")
    before = git("rev-parse", "--short", args.before)
    with tempfile.TemporaryDirectory() as workdir:
        tree = os.path.join(workdir, "before")
        git("worktree", "add", "--detach", tree, before)
        try:
            result = compare(tree, ROOT, args.rounds, args.frames)
        finally:
            git("worktree", "remove", "--force", tree)
    print(json.dumps({"before": before, "after": after, "modes": result}))
    print(markdown(result, before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
