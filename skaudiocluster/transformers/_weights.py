"""Pretrained weights as documented data: one :class:`WeightsInfo` per official checkpoint.

Each constant names a file, where it comes from, its sha256, its licence and the
paper to cite, in the manner of torchaudio's pipeline bundles. The embedders
accept the constant's ``name`` as ``weights=``; the file is downloaded once into
:func:`cache_dir` with :func:`torch.hub.download_url_to_file` (a temporary file,
hash-checked, then renamed) and checked again when a later process first loads it.

A checkpoint whose sha256 could not be recorded (the file could not be fetched
from its official location by the maintainers) must say so: it is registered
with ``unverified=True``, and every load of it emits an
:class:`UnverifiedWeightsWarning` naming the file. Those are listed by
:func:`unverified_weights`.

Examples
--------
>>> from skaudiocluster.transformers._weights import BYOLA_V1_D512, weights_info
>>> weights_info("byola-v1-d512") is BYOLA_V1_D512
True
>>> BYOLA_V1_D512.filename
'AudioNTT2020-BYOLA-64x96d512.pth'
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "WeightsInfo",
    "UnverifiedWeightsWarning",
    "unverified_weights",
    "register_weights",
    "registered_weights",
    "weights_info",
    "resolve_weights",
    "load_state_dict",
    "load_into",
    "cache_dir",
    "sha256_of",
    "BYOLA_V1_D512",
    "BYOLA_V1_D1024",
    "BYOLA_V1_D2048",
    "PASST_S_SWA_P16_128_AP476",
    "PASST_S_KD_P16_128_AP486",
    "PASST_L_KD_P16_128_AP47",
    "PASST_S_P16_S16_128_AP468",
    "PASST_B_F128_P16_S16_AP_459",
    "PASST_U600_F128_P16_S16_AP_460",
    "GE2E_RESEMBLYZER",
]


@dataclass(frozen=True)
class WeightsInfo:
    """An official checkpoint: where it lives, how to recognise it, on what terms.

    Parameters
    ----------
    name : str
        The name the embedders accept as ``weights=``.
    url : str
        Official download location.
    sha256 : str or None
        Hex digest of the file, checked on download and on load from the cache;
        ``None`` only with ``unverified=True``.
    filename : str
        File name in the cache folder (the official one).
    licence : str
        Terms the authors publish the weights under.
    source : str
        The project that trained and publishes them.
    citation : str
        The paper to cite when using them.
    unverified : bool, default=False
        ``True`` marks a file whose sha256 is not recorded: it is used unchecked,
        and loading it emits an :class:`UnverifiedWeightsWarning`. Required when
        ``sha256`` is ``None`` (and refused otherwise), so that no checkpoint is
        unchecked by omission.

    Examples
    --------
    >>> from skaudiocluster.transformers._weights import PASST_S_SWA_P16_128_AP476 as info
    >>> info.licence.split()[0]
    'Apache-2.0'
    """

    name: str
    url: str
    sha256: str | None
    filename: str
    licence: str
    source: str
    citation: str
    unverified: bool = False

    def __post_init__(self):
        if self.sha256 is None and not self.unverified:
            raise ValueError(
                f"weights {self.name!r} have no sha256: record it, or mark them "
                "unverified=True (then every load warns that the file is unchecked)"
            )
        if self.sha256 is not None and self.unverified:
            raise ValueError(f"weights {self.name!r} have a sha256 but are marked unverified")


class UnverifiedWeightsWarning(UserWarning):
    """A registered checkpoint whose sha256 is not recorded was loaded, unchecked."""


_REGISTRY: dict[str, WeightsInfo] = {}
# (path, size, mtime_ns) of cached files whose sha256 matched in this process, so a
# large file is hashed once per process rather than on every fit.
_VERIFIED: set[tuple[str, int, int]] = set()


def register_weights(info: WeightsInfo) -> WeightsInfo:
    """Make ``info.name`` a valid ``weights=`` value; return ``info``."""
    _REGISTRY[info.name] = info
    return info


def registered_weights(prefix: str = "") -> list[str]:
    """Names of the registered checkpoints that start with ``prefix``.

    Examples
    --------
    >>> registered_weights("byola")
    ['byola-v1-d1024', 'byola-v1-d2048', 'byola-v1-d512']
    """
    return sorted(name for name in _REGISTRY if name.startswith(prefix))


def weights_info(name: str) -> WeightsInfo:
    """The :class:`WeightsInfo` registered under ``name`` (``KeyError`` if none)."""
    return _REGISTRY[name]


def unverified_weights() -> list[str]:
    """Names of the registered checkpoints used unchecked (no sha256 recorded).

    Examples
    --------
    >>> unverified_weights()[:3]
    ['byola-v1-d1024', 'byola-v1-d2048', 'passt_b_f128_p16_s16_ap_459']
    """
    return sorted(name for name, info in _REGISTRY.items() if info.unverified)


_BYOLA_LICENCE = (
    "NTT software evaluation licence: internal evaluation use only, no redistribution "
    "(https://github.com/nttcslab/byol-a/blob/master/LICENSE)"
)
_BYOLA_SOURCE = "https://github.com/nttcslab/byol-a (BYOL-A v1, AudioNTT2020 encoder)"
_BYOLA_CITATION = (
    "D. Niizumi, D. Takeuchi, Y. Ohishi, N. Harada and K. Kashino, "
    '"BYOL for Audio: Self-Supervised Learning for General-Purpose Audio Representation", '
    "IJCNN 2021"
)
_BYOLA_URL = "https://github.com/nttcslab/byol-a/raw/master/pretrained_weights/"


def _byola(d: int, sha256: str | None) -> WeightsInfo:
    filename = f"AudioNTT2020-BYOLA-64x96d{d}.pth"
    return register_weights(
        WeightsInfo(
            name=f"byola-v1-d{d}",
            url=_BYOLA_URL + filename,
            sha256=sha256,
            filename=filename,
            licence=_BYOLA_LICENCE,
            source=_BYOLA_SOURCE,
            citation=_BYOLA_CITATION,
            unverified=sha256 is None,
        )
    )


#: BYOL-A v1, 512-d embeddings (the default of :class:`~skaudiocluster.BYOLAEmbedder`).
BYOLA_V1_D512 = _byola(512, "6cc64226318494f06ef41d7e5810be7d37abfd6490da45abdab48f188c5332e2")
# The d1024 and d2048 files were not available to the maintainers: no sha256 is
# recorded, so they are registered as unverified (loading them warns).
#: BYOL-A v1, 1024-d embeddings (unverified: sha256 not recorded, used unchecked, warns).
BYOLA_V1_D1024 = _byola(1024, None)
#: BYOL-A v1, 2048-d embeddings (unverified: sha256 not recorded, used unchecked, warns).
BYOLA_V1_D2048 = _byola(2048, None)

_PASST_LICENCE = "Apache-2.0 (https://github.com/kkoutini/PaSST/blob/main/LICENSE)"
_PASST_SOURCE = "https://github.com/kkoutini/PaSST (AudioSet checkpoints, GitHub releases)"
_PASST_CITATION = (
    "K. Koutini, J. Schlueter, H. Eghbal-zadeh and G. Widmer, "
    '"Efficient Training of Audio Transformers with Patchout", Interspeech 2022'
)
_PASST_URL = "https://github.com/kkoutini/PaSST/releases/download/"


def _passt(name: str, release: str) -> WeightsInfo:
    # The sha256 of the release files could not be obtained from our machines: they
    # are registered as unverified (used unchecked, with a warning) until someone
    # records it.
    return register_weights(
        WeightsInfo(
            name=name,
            url=_PASST_URL + release,
            sha256=None,
            filename=release.rsplit("/", 1)[1],
            licence=_PASST_LICENCE,
            source=_PASST_SOURCE,
            citation=_PASST_CITATION,
            unverified=True,
        )
    )


# AudioSet checkpoints for 10 s windows of 128-band, hop-320 log-mels (the front end
# of skaudiocluster.transformers._passt_frontend).
#: PaSST-S, stride 10, SWA (the HEAR 2021 default and :class:`~skaudiocluster.PaSSTEmbedder`'s).
PASST_S_SWA_P16_128_AP476 = _passt(
    "passt_s_swa_p16_128_ap476", "v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt"
)
#: PaSST-S, stride 10, knowledge-distilled.
PASST_S_KD_P16_128_AP486 = _passt("passt_s_kd_p16_128_ap486", "v.0.0.9/passt-s-kd-ap.486.pt")
#: PaSST-L (7 blocks), stride 10, knowledge-distilled.
PASST_L_KD_P16_128_AP47 = _passt("passt_l_kd_p16_128_ap47", "v.0.0.10/passt-l-kd-ap.47.pt")
#: PaSST-S, stride 16 (8 x 62 patches per 10 s: about twice as fast on a CPU).
PASST_S_P16_S16_128_AP468 = _passt(
    "passt_s_p16_s16_128_ap468", "v0.0.2-audioset/passt-s-f128-p16-s16-ap.468.pt"
)
#: PaSST-B, stride 16.
PASST_B_F128_P16_S16_AP_459 = _passt(
    "passt_b_f128_p16_s16_ap_459", "v.0.0.7-audioset/passt-b-f128-p16-s16-ap.459.pt"
)
#: PaSST-U600, stride 16.
PASST_U600_F128_P16_S16_AP_460 = _passt(
    "passt_u600_f128_p16_s16_ap_460", "v.0.0.7-audioset/passt-u600-f128-p16-s16-ap.460.pt"
)

#: The GE2E speaker encoder of Resemblyzer 0.1.4 (:class:`~skaudiocluster.SpeakerEmbedder`).
#: The file is ``resemblyzer/pretrained.pt`` in the repository and in the PyPI wheel; it
#: is cached under that relative path (a bare ``pretrained.pt`` would name nothing).
GE2E_RESEMBLYZER = register_weights(
    WeightsInfo(
        name="speaker-ge2e-resemblyzer",
        url="https://github.com/resemble-ai/Resemblyzer/raw/master/resemblyzer/pretrained.pt",
        sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
        filename="resemblyzer/pretrained.pt",
        licence="Apache-2.0 (https://github.com/resemble-ai/Resemblyzer/blob/master/LICENSE)",
        source="https://github.com/resemble-ai/Resemblyzer (Resemblyzer 0.1.4 voice encoder)",
        citation=(
            "L. Wan, Q. Wang, A. Papir and I. L. Moreno, "
            '"Generalized End-to-End Loss for Speaker Verification", ICASSP 2018'
        ),
    )
)


def cache_dir() -> Path:
    """Where downloaded weights are kept.

    ``$SKAUDIOCLUSTER_CACHE`` if set, else ``$XDG_CACHE_HOME/skaudiocluster``,
    else ``~/.cache/skaudiocluster``.
    """
    if os.environ.get("SKAUDIOCLUSTER_CACHE"):
        return Path(os.environ["SKAUDIOCLUSTER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skaudiocluster"


def resolve_weights(
    weights: str | os.PathLike,
    *,
    download: bool = True,
    progress: bool = False,
    family: str = "",
    owner: str = "",
) -> Path:
    """Return a local file for ``weights``: a registered name or a path.

    A registered name is looked up in :func:`cache_dir`. A cached file is
    checked against the recorded sha256 (once per process while its size and
    modification time stay the same); one that does not match raises a
    ``ValueError`` calling it corrupt, with its path and how to replace it. An
    absent file is downloaded from its official location with
    :func:`torch.hub.download_url_to_file`, which writes a temporary file,
    checks the sha256 and renames it, so no half-written or mismatching file
    is ever left. A name that cannot be downloaded (offline, or
    ``download=False``) raises a ``ValueError`` that says where to put the
    file by hand. A checkpoint registered as unverified (no sha256 recorded)
    is used unchecked and emits an :class:`UnverifiedWeightsWarning` naming
    the file.

    Parameters
    ----------
    weights : str or path
        A registered name (see :func:`registered_weights`) or a checkpoint file.
    download : bool, default=True
        Whether a registered file missing from the cache may be downloaded.
    progress : bool, default=False
        Show a progress bar while downloading.
    family : str, default=""
        Prefix of the registered names valid here (``"byola"``, ``"passt"``): a
        registered name outside it raises a ``ValueError`` (it is another
        network's checkpoint), and error messages list only the family's names.
    owner : str, default=""
        Who asks (e.g. ``"BYOLAEmbedder"``), for the messages.

    Returns
    -------
    path : Path
        An existing checkpoint file.
    """
    name = os.fspath(weights)
    known = ", ".join(registered_weights(family)) or "none"
    for_owner = f" for {owner}" if owner else ""
    if name in _REGISTRY and not name.startswith(family):
        raise ValueError(
            f"weights={name!r} is registered for another network, not{for_owner}; "
            f"registered{for_owner}: {known}"
        )
    if name in _REGISTRY:
        info = _REGISTRY[name]
        target = cache_dir() / info.filename
        if target.is_file():
            _check_cached(info, target)
        elif not download:
            raise ValueError(_offline_message(info, target, "downloading is disabled"))
        else:
            _download(info, target, progress=progress)
        if info.unverified:
            warn_unverified(info, target)
        return target
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise ValueError(
        f"weights={name!r} is neither an existing file nor a registered name "
        f"(registered{for_owner}: {known})"
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint's state dict safely (``weights_only=True``) onto the CPU.

    Checkpoints that wrap the state dict (``{"state_dict": ...}``,
    ``{"model": ...}`` or Resemblyzer's ``{"model_state": ...}``) are
    unwrapped. Anything else, or a tensor holding NaN or inf (a diverged
    training, a corrupt file), raises a ``ValueError`` naming the file and,
    for the latter, the tensor; so does an empty file.
    Which tensors a network needs, their dtype and shape are checked by
    :func:`load_into`.
    """
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False
    if empty:
        raise ValueError(
            f"cannot load checkpoint {os.fspath(path)!r}: it is an empty file (0 bytes; an "
            "interrupted download or copy?)"
        )
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise ValueError(f"cannot load checkpoint {os.fspath(path)!r}: {reason}") from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not hold a state dict of tensors")
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            n_bad = int((~torch.isfinite(tensor)).sum())
            if n_bad:
                raise ValueError(
                    f"checkpoint {os.fspath(path)!r} is unusable: tensor {key!r} holds "
                    f"{n_bad} NaN or infinite value(s) of {tensor.numel()}"
                )
    return state


def load_into(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    network: str,
    *,
    assign: bool = False,
) -> None:
    """Load ``state`` (from checkpoint ``path``) into ``module``, strictly, with clear errors.

    The one check every loader uses: the checkpoint must hold exactly the
    network's tensors (the message names the unexpected and the missing keys
    apart), each floating point where the network's is (an integer tensor would
    load, cast, into finite garbage) and of the network's shape.

    Parameters
    ----------
    module : torch.nn.Module
        The network, possibly on the meta device (then ``assign=True``).
    state : dict of str to Tensor
        From :func:`load_state_dict`.
    path : str or path-like
        The checkpoint, for messages.
    network : str
        The network's name, for messages (e.g. ``"PaSST"``).
    assign : bool, default=False
        Passed to :meth:`torch.nn.Module.load_state_dict`.

    Raises
    ------
    ValueError
        Naming the file and the offending keys.
    """
    where = f"checkpoint {os.fspath(path)!r} does not fit {network}"
    expected = module.state_dict()
    unexpected = [key for key in state if key not in expected]
    missing = [key for key in expected if key not in state]
    if unexpected or missing:
        problems = []
        if unexpected:
            problems.append(f"unexpected key(s) {_some(unexpected)}")
        if missing:
            problems.append(f"missing key(s) {_some(missing)}")
        raise ValueError(f"{where}: {'; '.join(problems)}")
    for key, tensor in state.items():
        target = expected[key]
        if target.is_floating_point() and not tensor.is_floating_point():
            raise ValueError(
                f"{where}: tensor {key!r} has dtype {tensor.dtype}, but weights must be floating "
                f"point ({target.dtype}); the file is corrupt or not a {network} checkpoint"
            )
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"{where}: tensor {key!r} has shape {tuple(tensor.shape)}, the network's "
                f"{tuple(target.shape)}"
            )
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def warn_unverified(info: WeightsInfo, path: Path) -> None:
    """Warn that ``path``, the file of unverified ``info``, is used without a hash check."""
    import warnings

    warnings.warn(
        f"weights {info.name!r}: the file {path} is used unchecked: its sha256 is not "
        "recorded in skaudiocluster's weights registry, so a damaged or substituted file "
        f"would not be detected. Compare it with the official file ({info.url}) if in doubt.",
        UnverifiedWeightsWarning,
        stacklevel=3,
    )


def mismatching_digest(info: WeightsInfo, path: Path) -> str | None:
    """``None`` if ``path`` has ``info.sha256`` (hashed once per process while unchanged),
    else its actual digest."""
    if _file_key(path) in _VERIFIED:
        return None
    digest = sha256_of(path)
    if digest != info.sha256:
        return digest
    _VERIFIED.add(_file_key(path))
    return None


def _check_cached(info: WeightsInfo, target: Path) -> None:
    if info.sha256 is None:
        return
    digest = mismatching_digest(info, target)
    if digest is not None:
        raise ValueError(
            f"the cached weights file {target} is corrupt: its sha256 is {digest}, "
            f"{info.name!r} has {info.sha256}. Delete it ({target}) so that it is "
            f"downloaded again on next use, or replace it with a fresh copy of {info.url}."
        )


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns


def _download(info: WeightsInfo, target: Path, *, progress: bool) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            info.url, os.fspath(target), hash_prefix=info.sha256, progress=progress
        )
    except RuntimeError as exc:  # torch.hub's sha256 mismatch; it removed its temporary file
        raise ValueError(
            f"the download of weights {info.name!r} from {info.url} is corrupt "
            f"(sha256 mismatch: {exc}); nothing was kept at {target}. Try again. "
            + _by_hand(info, target)
        ) from exc
    except OSError as exc:
        raise ValueError(_offline_message(info, target, str(exc))) from exc
    if info.sha256 is not None:  # torch.hub checked the full digest as it wrote the file
        _VERIFIED.add(_file_key(target))


def _by_hand(info: WeightsInfo, target: Path) -> str:
    licence = f" Licence: {info.licence}." if info.licence else ""
    return (
        f"Download {info.url} on a machine with internet and place it at {target} "
        f"(or load a local file with weights='/path/to/{info.filename}').{licence}"
    )


def _offline_message(info: WeightsInfo, target: Path, reason: str) -> str:
    return f"could not obtain weights {info.name!r} ({reason}). " + _by_hand(info, target)
