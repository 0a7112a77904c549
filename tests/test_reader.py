"""The Reader's second look at crops the model is unsure of."""

import numpy as np

from daemon import preprocess
from daemon.reader import second_look


class CountingBackend(object):
    """Answers each tensor by its mean brightness: class 1 gets the mean, class 0 the rest."""

    def __init__(self):
        self.calls = []

    def infer_all(self, batch):
        self.calls.append(len(batch))
        means = np.asarray(batch).reshape(len(batch), -1).mean(axis=1)
        return np.stack([1.0 - means, means], axis=1)

    infer_exact = infer_all  # one model: its answers are already the most exact


def test_only_unsure_rows_are_read_again_in_one_call_and_averaged():
    tensors = np.zeros((3, 28, 28, 1), np.float32)
    tensors[1, 10:18, 10:18, 0] = 1.0  # a square: its answer is unsure of neither class
    backend = CountingBackend()
    first = backend.infer_all(tensors)
    rows = second_look(backend, tensors, first, below=0.99)
    assert backend.calls == [3, 6]  # the first call, then the one unsure row's six variations at once
    assert np.array_equal(rows[[0, 2]], first[[0, 2]])  # sure rows as they were
    variants = preprocess.tensor_variants(tensors[1:2])
    expected = (first[1] + backend.infer_all(variants).sum(axis=0)) / 7.0
    assert np.allclose(rows[1], expected) and not np.allclose(rows[1], first[1])
    assert np.allclose(rows.sum(axis=1), 1.0)


def test_off_or_all_sure_costs_no_second_call():
    tensors = np.zeros((2, 28, 28, 1), np.float32)
    backend = CountingBackend()
    first = backend.infer_all(tensors)
    assert np.array_equal(second_look(backend, tensors, first, below=0.0), first)
    assert np.array_equal(second_look(backend, tensors, first, below=0.9), first)  # blank: sure of class 0
    assert backend.calls == [2]
