"""List the Python names a ``tensorrt`` module exposes: the real bindings from PyPI wheels, or the simulator.

    python tests/tensorrt_simulator/list_names.py --download /tmp/trt-wheels   # fetch the wheels (pip)
    python tests/tensorrt_simulator/list_names.py --wheel /tmp/trt-wheels/*.whl  # -> names/tensorrt-<v>.txt
    python tests/tensorrt_simulator/list_names.py --simulator 11.4.0             # print the simulator's names

One name per line: module-level classes and functions (``Builder``, ``nptype``), every public
attribute of a class (``Builder.create_network``) and every member of an enum
(``BuilderFlag.FP16``). The real bindings import without a GPU once their TensorRT libraries
resolve; those are replaced by a stub shared library (compiled here with ``cc``) that defines
the dozen entry points the bindings link against, none of which runs at import. So the lists
say what exists in each release, not that it works. test_tensorrt_backend.py checks that the
simulator never offers a name the matching real release lacks.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES_DIR = os.path.join(HERE, "names")
# tensorrt-bindings 8.6.1 is the oldest Python wheel on PyPI (8.2 only ships inside JetPack).
WHEELS = (
    "tensorrt-bindings==8.6.1",
    "tensorrt-cu12-bindings==10.3.0",
    "tensorrt-cu12-bindings==10.16.1.11",
    "tensorrt-cu12-bindings==11.4.0.106",
)
STUB_SOURCE = "\n".join(
    "void *%s(void) { return 0; }" % name
    for name in (
        "createInferBuilder_INTERNAL",
        "createInferRefitter_INTERNAL",
        "createInferRuntime_INTERNAL",
        "createNvOnnxParser_INTERNAL",
        "createNvOnnxParserRefitter_INTERNAL",
        "getBuilderPluginRegistry",
        "getNvOnnxParserVersion",
        "getPluginRegistry",
        "initLibNvInferPlugins",
        "_ZN11nvuffparser15createUffParserEv",
        "_ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi",
        "_ZN14nvcaffeparser117createCaffeParserEv",
        "_ZN14nvcaffeparser123shutdownProtobufLibraryEv",
    )
)
STUB_LIBRARIES = ("libnvinfer", "libnvonnxparser", "libnvparsers", "libnvinfer_plugin")

# Runs inside the interpreter that imports the module; prints a JSON list of names.
LISTER = r"""
import enum, importlib, inspect, json, sys
module = importlib.import_module(sys.argv[1])
simulated = sys.argv[2] == "simulator"
names = set()
for name in dir(module):
    value = getattr(module, name)
    if name.startswith("_") or inspect.ismodule(value):
        continue
    if simulated and getattr(value, "__module__", None) != module.__name__:
        continue  # imports of the simulator (json, np, ...), not part of its API
    if not (inspect.isclass(value) or callable(value)):
        continue
    names.add(name)
    if not inspect.isclass(value):
        continue
    members = getattr(value, "__members__", None)
    if members is not None:
        names.update("%s.%s" % (name, member) for member in members)
        continue
    names.update("%s.%s" % (name, attr) for attr in dir(value) if not attr.startswith("_"))
print(json.dumps(sorted(names)))
"""


def list_module(python, module, kind, env=None, cwd=None):
    output = subprocess.check_output([python, "-c", LISTER, module, kind], env=env, cwd=cwd)
    return json.loads(output.decode("utf-8"))


def simulator_names(version, python=sys.executable):
    """The names the simulator exposes when it plays TensorRT ``version``."""
    env = dict(os.environ, PYTHONPATH=HERE, DIGITD_TRT_SIM_VERSION=version)
    return list_module(python, "tensorrt", "simulator", env=env)


def wheel_names(wheel_path, workdir):
    """(version, names) of a tensorrt bindings wheel, imported against stub libraries."""
    version = re.search(r"bindings-([0-9][0-9.]*[0-9])", os.path.basename(wheel_path)).group(1)
    target = os.path.join(workdir, version)
    with zipfile.ZipFile(wheel_path) as archive:
        archive.extractall(target)
    stub_dir = os.path.join(workdir, "stub")
    if not os.path.isdir(stub_dir):
        os.makedirs(stub_dir)
        source = os.path.join(stub_dir, "stub.c")
        with open(source, "w") as handle:
            handle.write(STUB_SOURCE + "\n")
        subprocess.check_call(["cc", "-shared", "-fPIC", "-o", os.path.join(stub_dir, "libstub.so"), source])
        for library in STUB_LIBRARIES:
            for major in ("8", "10", "11"):
                os.symlink("libstub.so", os.path.join(stub_dir, "%s.so.%s" % (library, major)))
    env = dict(os.environ, LD_LIBRARY_PATH=stub_dir)
    return version, list_module(sys.executable, "tensorrt_bindings", "real", env=env, cwd=target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--download", metavar="DIR", help="pip download the bindings wheels into DIR")
    parser.add_argument("--wheel", nargs="+", default=[], help="write names/tensorrt-<version>.txt")
    parser.add_argument("--simulator", metavar="VERSION", help="print the simulator's names")
    args = parser.parse_args(argv)
    if args.download:
        for spec in WHEELS:
            subprocess.check_call(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-d",
                    args.download,
                    spec,
                ]
            )
    if args.wheel:
        if not os.path.isdir(NAMES_DIR):
            os.makedirs(NAMES_DIR)
        workdir = tempfile.mkdtemp(prefix="trt-names-")
        for wheel in args.wheel:
            version, names = wheel_names(wheel, workdir)
            path = os.path.join(NAMES_DIR, "tensorrt-%s.txt" % version)
            with open(path, "w") as handle:
                handle.write(
                    "# names in %s (tests/tensorrt_simulator/list_names.py)\n" % os.path.basename(wheel)
                )
                handle.write("\n".join(names) + "\n")
            print("%s: %d names -> %s" % (version, len(names), path))
    if args.simulator:
        print("\n".join(simulator_names(args.simulator)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
