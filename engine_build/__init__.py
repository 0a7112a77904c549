"""Host-side model pipeline: data, training, export, evaluation (and the on-device engine build)."""


def run_main(main, parse_args, expected_errors=()):
    """``sys.exit(main(parse_args()))`` with known errors printed as one line and exit 1."""
    import os
    import sys

    from engine_build.mnist import MnistDataError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.exit(main(parse_args()))
    except (MnistDataError,) + tuple(expected_errors) as error:
        print("error: %s" % error, file=sys.stderr)
        sys.exit(1)
