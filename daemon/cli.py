"""Command line: ``python -m daemon run|check-config|predict`` (installed as ``digitd``).

Exit codes: 0 clean stop; 78 configuration error; 69 backend or source
unavailable; 1 anything unexpected (and ``predict`` when an image is unreadable).
"""

import argparse
import json
import logging
import os
import sys

from daemon import config as config_module
from daemon.backends import BackendUnavailable
from daemon.outbox import SpoolError
from daemon.sources import SourceError

# run and predict import the reading code (numpy, OpenCV) only when they need it: check-config
# stays quick on the Nano.

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78

log = logging.getLogger("daemon")


def setup_logging(level="INFO"):
    """Plain lines for journald (it adds timestamps), timestamped lines on a terminal."""
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("paho").setLevel(max(logging.getLevelName(level), logging.WARNING))


def build_parser():
    parser = argparse.ArgumentParser(prog="digitd", description="Read handwritten digits from a camera.")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run the daemon until SIGTERM/SIGINT or the input ends")
    run.add_argument("-c", "--config", default="config.yaml")
    run.add_argument("--max-frames", type=int, default=0, help="stop after N frames")
    check = commands.add_parser("check-config", help="validate a config file (exit 0 or 78)")
    check.add_argument("-c", "--config", default="config.yaml")
    predict = commands.add_parser("predict", help="read the digit(s) in image files")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--roi",
        default="center",
        choices=("center", "full", "boxes", "segment", "grid"),
        help="center: one digit in the largest centred square; full: each whole image as one digit "
        "(e.g. a meter digit's box); segment: numbers (lines); grid: a sudoku or form (roi.grid_rows x "
        "roi.grid_cols, 9x9 by default); boxes: the config's roi.boxes. -c gives the ROI settings",
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.add_argument(
        "-c", "--config", default=None, help="take ROI, preprocess and backend settings from here"
    )
    return parser


def _load_config(path):

    return config_module.load(path)


def _print_config_errors(error, path):
    print("%s: %d configuration error(s):" % (path, len(error.errors)), file=sys.stderr)
    for line in error.errors:
        print("  " + line, file=sys.stderr)


def cmd_check_config(args):

    try:
        _load_config(args.config)
    except config_module.ConfigError as error:
        _print_config_errors(error, args.config)
        return EXIT_CONFIG
    print("%s: OK" % args.config)
    return EXIT_OK


def cmd_run(args):
    from daemon.service import Service

    try:
        config = _load_config(args.config)
    except config_module.ConfigError as error:
        setup_logging()
        _print_config_errors(error, args.config)
        return EXIT_CONFIG
    setup_logging(config.log_level)
    service = Service(config, args.config)
    service.install_signal_handlers()
    try:
        service.open()
    except SpoolError as error:
        log.error("configuration error: %s", error)
        service.close()
        return EXIT_CONFIG
    except (BackendUnavailable, SourceError) as error:
        log.error("%s", error)
        service.close()
        return EXIT_UNAVAILABLE
    except OSError as error:  # e.g. the HTTP port is taken
        log.error("cannot start: %s", error)
        service.close()
        return EXIT_UNAVAILABLE
    service.run(max_frames=args.max_frames or None)
    if service.pipeline.ended_without_frames():
        log.error("%s: no frame could be read", service.pipeline.describe_source())
        return EXIT_UNAVAILABLE
    return EXIT_OK


def cmd_predict(args):
    from daemon import predict
    from daemon.reader import Reader

    setup_logging("WARNING")
    try:
        config = _load_config(args.config) if args.config else config_module.defaults()
    except config_module.ConfigError as error:
        _print_config_errors(error, args.config)
        return EXIT_CONFIG
    if args.roi == "boxes" and not config.roi.boxes:
        print("error: --roi boxes reads the boxes of a config's roi.boxes; give one with -c", file=sys.stderr)
        return EXIT_CONFIG
    try:
        reader = Reader.from_config(config)
    except BackendUnavailable as error:
        print("error: %s" % error, file=sys.stderr)
        return EXIT_UNAVAILABLE
    status = EXIT_OK
    with reader:
        for path in args.images:
            try:
                result = predict.read_file(reader, path, args.roi)
            except predict.ImageError as error:
                status = EXIT_UNEXPECTED
                result = {"file": path, "error": str(error)}
                print("%s: %s" % (path, error), file=sys.stderr)
            if args.json:
                print(json.dumps(result))
            elif "error" not in result:
                print(predict.describe(result))
    return status


def main(argv=None):
    """Entry point; returns the process exit code via sys.exit."""
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "check-config": cmd_check_config, "predict": cmd_predict}
    if args.command not in handlers:
        build_parser().print_help()
        sys.exit(EXIT_CONFIG)
    try:
        code = handlers[args.command](args)
    except KeyboardInterrupt:
        code = EXIT_OK
    except Exception:  # noqa: BLE001 - last resort: log and exit 1 for systemd to restart us
        logging.getLogger("daemon").exception("unexpected error")
        code = EXIT_UNEXPECTED
    sys.exit(code)
