"""YuNet, libfacedetection's face detector, rebuilt as an ONNX graph from the weights inside the `yuface` wheel.

The `yuface` wheel (libfacedetection 2023) compiles its weights into `libfacedetection.so` and runs the network
with SSE code: ~40 ms for a 640 px photo on one core here. The same network run by onnxruntime takes a fraction
of that and gives the same boxes (tests/integration/test_yunet.py compares the two). The weights are read from the loaded
library through its exported symbols (`init_parameters`, `g_pFilters`), so nothing is downloaded or copied.

The network (libfacedetection's `objectdetect_cnn`): a 3x3/2 convolution, then blocks of (1x1 convolution,
3x3 depth-wise convolution, ReLU) with 2x2 max-pools, three feature levels (strides 8, 16, 32) merged top-down,
and per level four heads: class, objectness, box and five landmarks. A face's score is sqrt(class x objectness).
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import ModelError

PACKAGE = "yuface"
LIBRARY = "libfacedetection.so"
LAYERS = 53
STRIDES = (8, 16, 32)
PAD = 32  # the input is zero-padded (bottom, right) to a multiple of the coarsest stride
INPUT = "image"


class _Blob(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("cols", ctypes.c_int), ("channels", ctypes.c_int),
                ("channel_step", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_float))]


class _Filters(ctypes.Structure):
    _fields_ = [("channels", ctypes.c_int), ("num_filters", ctypes.c_int), ("is_depthwise", ctypes.c_bool),
                ("is_pointwise", ctypes.c_bool), ("with_relu", ctypes.c_bool), ("weights", _Blob),
                ("biases", _Blob)]


@dataclass(frozen=True)
class Layer:
    weights: np.ndarray  # pointwise: (out, in); depthwise: (9, channels), row-major 3x3 positions
    biases: np.ndarray
    depthwise: bool


def library_path() -> Path:
    """libfacedetection.so inside the installed yuface wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / LIBRARY
        if path.is_file():
            return path
    raise ModelError(f"{LIBRARY} not found: the face detector's weights come from the package {PACKAGE}; "
                     "install it with `uv sync --frozen`")


def load_layers(path: Path | None = None) -> list[Layer]:
    """The 53 convolution layers as libfacedetection holds them after its own initialisation."""
    path = path or library_path()
    try:
        library = ctypes.CDLL(str(path))
        library._Z15init_parametersv()
        table = (_Filters * LAYERS).in_dll(library, "g_pFilters")
    except (OSError, AttributeError, ValueError) as err:
        raise ModelError(f"{path} is not the libfacedetection this code reads ({err}): "
                         f"reinstall the package {PACKAGE} (`uv sync --frozen`)") from None
    layers = []
    for filters in table:
        def read(blob: _Blob) -> np.ndarray:
            step = blob.channel_step // 4
            flat = np.ctypeslib.as_array(blob.data, shape=(blob.rows * blob.cols * step,))
            return flat.reshape(blob.rows * blob.cols, step)[:, :blob.channels].copy()
        weights, biases = read(filters.weights), read(filters.biases)[0]
        if filters.is_depthwise == filters.is_pointwise or len(biases) != filters.num_filters:
            raise ModelError(f"{path}: unexpected layer layout; reinstall the package {PACKAGE}")
        layers.append(Layer(weights, biases, bool(filters.is_depthwise)))
    return layers


def onnx_graph(layers: list[Layer]) -> bytes:
    """The detector network as a serialized ONNX model: (1, 3, H, W) float pixels -> 12 head outputs."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights = [], []

    def constant(array: np.ndarray) -> str:
        name = f"w{len(weights)}"
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(op: str, inputs: list[str], name: str | None = None, **attributes: Any) -> str:
        name = name or f"n{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def conv(x: str, layer: Layer, relu: bool) -> str:
        if layer.depthwise:
            channels = layer.weights.shape[1]
            kernel = layer.weights.T.reshape(channels, 1, 3, 3)
            y = node("Conv", [x, constant(kernel), constant(layer.biases)], group=channels,
                     kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        else:
            out, inputs = layer.weights.shape
            y = node("Conv", [x, constant(layer.weights.reshape(out, inputs, 1, 1)), constant(layer.biases)],
                     kernel_shape=[1, 1])
        return node("Relu", [y]) if relu else y

    def dp(x: str, first: int, relu: bool = True) -> str:
        return conv(conv(x, layers[first], False), layers[first + 1], relu)

    def unit(x: str, first: int) -> str:
        return dp(dp(x, first), first + 2)

    def pool(x: str) -> str:
        return node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def up_add(coarse: str, fine: str) -> str:
        scales = constant(np.array([1, 1, 2, 2], dtype=np.float32))
        return node("Add", [node("Resize", [coarse, "", scales], mode="nearest"), fine])

    # The first layer is a 3x3/2 convolution stored as a 1x1 over the 27 (ky, kx, colour) values of each window.
    head = layers[0]
    out = head.weights.shape[0]
    kernel = head.weights[:, :27].reshape(out, 3, 3, 3).transpose(0, 3, 1, 2)
    x = node("Relu", [node("Conv", [INPUT, constant(kernel), constant(head.biases)], kernel_shape=[3, 3],
                           strides=[2, 2], pads=[1, 1, 0, 0])])
    x = pool(dp(x, 1))
    x = unit(unit(x, 3), 7)
    level8 = unit(pool(x), 11)
    level16 = unit(pool(level8), 15)
    level32 = unit(pool(level16), 19)
    level32 = dp(level32, 27)
    level16 = dp(up_add(level32, level16), 25)
    level8 = dp(up_add(level16, level8), 23)
    outputs = []
    for level, feature in enumerate((level8, level16, level32)):
        for head_name, first in (("cls", 29), ("obj", 41), ("box", 35), ("kps", 47)):
            outputs.append(node("Identity", [dp(feature, first + 2 * level, relu=False)],
                                name=f"{head_name}{STRIDES[level]}"))
    graph = helper.make_graph(
        nodes, "yunet", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bbt")
    return model.SerializeToString()


@dataclass(frozen=True)
class Detection:
    score: float
    box: tuple[float, float, float, float]  # x, y, w, h in the input image's pixels
    landmarks: np.ndarray  # (5, 2): right eye, left eye, nose, mouth corners


class YuNet:
    """The detector network on onnxruntime (one thread per session; one session per process, thread-safe)."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(onnx_graph(load_layers(path)), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, image: np.ndarray, min_score: float = 0.5, nms_iou: float = 0.5) -> list[Detection]:
        """Faces in a (h, w, 3) uint8 image (BGR, as the wheel takes it), best first."""
        height, width = image.shape[:2]
        padded_h, padded_w = -(-height // PAD) * PAD, -(-width // PAD) * PAD
        pixels = np.zeros((1, 3, padded_h, padded_w), np.float32)
        pixels[0, :, :height, :width] = image.transpose(2, 0, 1)
        outputs = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, {INPUT: pixels})))
        scores, boxes, points = [], [], []
        for stride in STRIDES:
            cls, obj, box, kps = (outputs[f"{name}{stride}"][0] for name in ("cls", "obj", "box", "kps"))
            rows, cols = cls.shape[1:]
            score = np.sqrt(_sigmoid(cls[0]) * _sigmoid(obj[0])).ravel()
            keep = np.flatnonzero(score >= min_score)
            if not len(keep):
                continue
            prior_y, prior_x = (v.ravel()[keep] * stride for v in np.mgrid[0:rows, 0:cols].astype(np.float32))
            box = box.reshape(4, -1)[:, keep]
            cx, cy = box[0] * stride + prior_x, box[1] * stride + prior_y
            w, h = np.exp(box[2]) * stride, np.exp(box[3]) * stride
            scores.append(score[keep])
            boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
            kps = kps.reshape(5, 2, -1)[:, :, keep] * stride
            points.append((kps + np.stack([prior_x, prior_y])[None]).transpose(2, 0, 1))
        if not scores:
            return []
        score, corners, landmarks = np.concatenate(scores), np.concatenate(boxes), np.concatenate(points)
        # A stable sort, so equal scores keep the network's order (as libfacedetection's stable_sort does).
        order = np.argsort(-score, kind="stable")
        kept: list[int] = []
        for i in order:
            if all(_iou(corners[i], corners[j]) <= nms_iou for j in kept):
                kept.append(int(i))
        return [Detection(float(score[i]), (float(corners[i, 0]), float(corners[i, 1]),
                                            float(corners[i, 2] - corners[i, 0]),
                                            float(corners[i, 3] - corners[i, 1])), landmarks[i])
                for i in kept]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -88.38, 88.38)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


_lock = threading.Lock()
_network: YuNet | None = None


def network() -> YuNet:
    """The process's detector session, built on first use."""
    global _network
    with _lock:
        if _network is None:
            _network = YuNet()
        return _network
