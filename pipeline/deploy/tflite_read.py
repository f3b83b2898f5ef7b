"""Reading a .tflite flatbuffer without an interpreter: its ops, the bytes of its weights, a signature's tensor names.

    tflite_ops(path) -> {op name: count}      tflite_weight_bytes(path) -> bytes of constant data
    signature_tensor_names(content, signature) -> (input names, output names) in the subgraph's order
"""

from __future__ import annotations

from pathlib import Path

from pipeline.deploy.tflite_edit import op_name, read_model


def tflite_ops(path: str | Path) -> dict[str, int]:
    """Op name -> count over every subgraph of a .tflite file (WHILE bodies included), read from the flatbuffer.

    Custom ops appear under their custom code; Flex (SELECT_TF_OPS) ops are named `Flex...`.
    An interpreter's op list would also show XNNPACK `DELEGATE` nodes, which are not Flex ops.
    """
    model = read_model(Path(path).read_bytes())
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = op_name(model, op.opcodeIndex)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tflite_weight_bytes(path: str | Path) -> int:
    """Bytes of constant data (weights) in a .tflite file; the rest is the graph itself (ops, tensors, quantization)."""
    model = read_model(Path(path).read_bytes())
    return int(sum(len(b.data) for b in model.buffers if b.data is not None))


def signature_tensor_names(content: bytes, signature: str) -> tuple[list[str], list[str]]:
    """(input names, output names) of a signature, in the order of its subgraph's inputs and outputs (the order
    runtimes index tensors by)."""
    model = read_model(content)
    (sig,) = [s for s in model.signatureDefs if s.signatureKey.decode() == signature]
    subgraph = model.subgraphs[sig.subgraphIndex]
    inputs = {t.tensorIndex: t.name.decode() for t in sig.inputs}
    outputs = {t.tensorIndex: t.name.decode() for t in sig.outputs}
    return [inputs[i] for i in subgraph.inputs], [outputs[i] for i in subgraph.outputs]
