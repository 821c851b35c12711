"""An FP16 copy of a small float32 ONNX model made by hand (float32 I/O), for tests without ModelOpt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fp16_by_hand(src: Path, dst: Path) -> Path:
    """Write ``src`` with every float32 weight in float16 and Casts at the float32 inputs and outputs.

    What AutoCast with ``--keep_io_types`` produces when it keeps no node in FP32; fine for
    graphs whose ops all accept float16 (the tiny CAM models of tests/tinymodels.py).
    """
    model = onnx.load(str(src))
    graph = model.graph
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
    casts_in = []
    for inp in graph.input:
        half = f"{inp.name}__f16"
        for node in graph.node:
            node.input[:] = [half if i == inp.name else i for i in node.input]
        casts_in.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16))
    casts_out = []
    for out in graph.output:
        half = f"{out.name}__f16"
        for node in graph.node:
            node.output[:] = [half if o == out.name else o for o in node.output]
            node.input[:] = [half if i == out.name else i for i in node.input]
        casts_out.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst
