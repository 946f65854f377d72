import io
import urllib.request

import pytest
import torch

# importing the embedders registers their official checkpoints
import skaudiocluster.transformers.byola  # noqa: F401
import skaudiocluster.transformers.passt  # noqa: F401
from skaudiocluster.transformers import _weights
from skaudiocluster.transformers._weights import (
    WeightsInfo,
    load_state_dict,
    register_weights,
    registered_weights,
    resolve_weights,
    sha256_of,
)


def _no_network(*args, **kwargs):
    raise OSError("network is unreachable")


@pytest.mark.parametrize(
    "name, filename, where",
    [
        ("byola-v1-d1024", "AudioNTT2020-BYOLA-64x96d1024.pth", "github.com/nttcslab/byol-a"),
        (
            "passt_s_swa_p16_128_ap476",
            "passt-s-f128-p16-s10-ap.476-swa.pt",
            "https://github.com/kkoutini/PaSST/releases/download/",
        ),
    ],
)
def test_offline_registered_name_says_where_to_put_the_file(
    tmp_path, monkeypatch, name, filename, where
):
    monkeypatch.setenv("SKAUDIOCLUSTER_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(ValueError) as info:
        resolve_weights(name)
    message = str(info.value)
    assert str(tmp_path / filename) in message and where in message
    assert not list(tmp_path.iterdir())  # no half-written file


def test_registry_lists_both_embedders():
    assert "byola-v1-d512" in registered_weights("byola")
    assert "passt_s_swa_p16_128_ap476" in registered_weights("passt")


def _serve(payload: bytes):
    def urlopen(url, timeout=None):
        return io.BytesIO(payload)

    return urlopen


def test_download_checks_sha256_and_keeps_nothing_on_mismatch(tmp_path, monkeypatch):
    payload = b"not really a checkpoint"
    source = tmp_path / "payload"
    source.write_bytes(payload)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SKAUDIOCLUSTER_CACHE", str(cache))
    monkeypatch.setattr(urllib.request, "urlopen", _serve(payload))
    monkeypatch.setattr(_weights, "_REGISTRY", dict(_weights._REGISTRY))
    good = WeightsInfo("test-good", "https://example.org/good.pt", sha256_of(source), "good.pt")
    bad = WeightsInfo("test-bad", "https://example.org/bad.pt", "0" * 64, "bad.pt")
    register_weights(good)
    register_weights(bad)
    assert resolve_weights("test-good").read_bytes() == payload
    with pytest.raises(ValueError, match="sha256 mismatch"):
        resolve_weights("test-bad")
    assert sorted(p.name for p in cache.iterdir()) == ["good.pt"]


def test_paths_pass_through_and_unknown_names_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    assert resolve_weights(path) == path
    with pytest.raises(ValueError, match="neither an existing file nor a registered name"):
        resolve_weights("no-such-weights")


def test_load_state_dict_unwraps_and_rejects(tmp_path):
    state = {"layer.weight": torch.ones(2, 2)}
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    assert load_state_dict(tmp_path / "wrapped.pt").keys() == state.keys()
    torch.save({"epoch": 3}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "bad.pt")
