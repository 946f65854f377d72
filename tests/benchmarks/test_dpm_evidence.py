"""benchmarks/dpm_evidence.py: the DP mixture's log posterior of partitions, and its best K."""

import numpy as np
import torch
from sklearn.datasets import make_blobs


def _blobs(n_samples: int, centers: int, n_features: int = 4):
    X, y = make_blobs(n_samples, n_features=n_features, centers=centers, random_state=0)
    return X, y


def test_separated_classes_beat_one_cluster_and_k_star_finds_them(dpm_evidence):
    X, y = _blobs(300, 3)
    Z, prior, alpha = dpm_evidence.deepdpm_view(X, n_components=32)
    assert Z.dtype == torch.float64 and Z.shape == (300, 4)  # 4 features: no PCA
    true = dpm_evidence.partition_log_posterior(Z, y, prior, alpha)
    one = dpm_evidence.partition_log_posterior(Z, np.zeros(300), prior, alpha)
    assert true > one
    k, labels = dpm_evidence.preferred_k(Z, prior, alpha, max_k=6)
    assert k == 3 and len(np.unique(labels)) == 3


def test_one_gaussian_is_not_split(dpm_evidence):
    X = np.random.default_rng(0).normal(size=(300, 4))
    Z, prior, alpha = dpm_evidence.deepdpm_view(X, n_components=32)
    assert dpm_evidence.preferred_k(Z, prior, alpha, max_k=6)[0] == 1


def test_labels_are_read_as_codes_whatever_their_values(dpm_evidence):
    X, y = _blobs(120, 2)
    Z, prior, alpha = dpm_evidence.deepdpm_view(X, n_components=32)
    as_codes = dpm_evidence.partition_log_posterior(Z, y, prior, alpha)
    as_strings = dpm_evidence.partition_log_posterior(Z, np.where(y == 0, "b", "a"), prior, alpha)
    assert as_codes == as_strings
