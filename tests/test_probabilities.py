"""Stored probabilities: one encoding, the same bytes from numpy and from torch."""

import numpy as np
import torch

from segflow.probabilities import decode_probabilities, encode_probabilities


def test_numpy_and_torch_encode_to_the_same_bytes():
    rng = np.random.default_rng(0)
    p = rng.random((3, 5, 8, 8), dtype=np.float32)
    p[0, 0, 0, :5] = [0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0, 0.0]  # ties round to even
    from_numpy = encode_probabilities(p)
    from_torch = encode_probabilities(torch.from_numpy(p)).numpy()
    assert from_numpy.dtype == from_torch.dtype == np.uint8
    np.testing.assert_array_equal(from_numpy, from_torch)
    assert from_numpy[0, 0, 0, :5].tolist() == [0, 2, 2, 255, 0]
    # float64 (an ensemble's weighted mean) goes through the same formula
    q = np.array([0.1, 0.25, 0.999], np.float64)
    assert encode_probabilities(q).tolist() == [26, 64, 255]


def test_decode_undoes_the_encoding_of_sets_and_of_their_weighted_means():
    stored = np.array([[0, 51, 204, 255]], np.uint8)
    np.testing.assert_allclose(decode_probabilities(stored), [[0, 0.2, 0.8, 1.0]])
    other = np.array([[255, 51, 0, 255]], np.uint8)
    mean = np.float32(0.5) * stored.astype(np.float32) + np.float32(0.5) * other
    np.testing.assert_allclose(decode_probabilities(mean), [[0.5, 0.2, 0.4, 1.0]])
    assert decode_probabilities(stored).dtype == np.float32
