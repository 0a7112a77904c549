"""The backend interface every inference runtime implements."""

import importlib
import os


class BackendUnavailable(Exception):
    """The runtime or its model file is missing or unusable (exit code 69)."""


def import_runtime(module_name, missing_hint):
    """Import a runtime module lazily; if it is missing, BackendUnavailable says what to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable("%s (%s)" % (missing_hint, exc)) from exc


def require_file(path, what):
    """BackendUnavailable naming ``what`` unless ``path`` is a file."""
    if not os.path.isfile(path):
        raise BackendUnavailable("%s %s does not exist" % (what, path))


class Backend(object):
    """load() once, infer(batch) many times, close() once.

    ``infer`` takes float32 [N,28,28,1] from daemon.preprocess (N <= max_batch) and
    returns float32 probabilities [N,10]. ``name`` goes into every payload.
    """

    name = "base"
    max_batch = 1024

    def load(self):
        raise NotImplementedError

    def infer(self, batch):
        raise NotImplementedError

    def close(self):
        """Release the runtime; safe to call twice."""

    def infer_all(self, batch):
        """Run a batch of any size in chunks of at most ``max_batch``."""
        return self._in_chunks(self.infer, batch)

    def _in_chunks(self, run, batch):
        """``run`` over ``batch`` in chunks of at most ``max_batch``, answers joined."""
        if len(batch) <= self.max_batch:
            return run(batch)
        import numpy as np

        parts = [run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(parts)

    def infer_exact(self, batch):
        """``infer_all`` with the most exact model the backend has (no quicker copy first):
        for crops already known to be unsure."""
        return self.infer_all(batch)

    def __enter__(self):
        self.load()
        return self

    def __exit__(self, *exc_info):
        self.close()
