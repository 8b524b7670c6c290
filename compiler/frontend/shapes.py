"""Static input shapes: banana compiles for fixed shapes, users override dynamic ones by name."""

from __future__ import annotations

import onnx

from banana.compiler.errors import BadConfigError


def parse_shape_override(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``name=d0,d1,...`` (the CLI's ``--shape``)."""
    name, sep, dims = text.partition("=")
    if not sep or not name or not dims:
        raise BadConfigError(f"--shape '{text}': expected NAME=D0,D1,... (e.g. latent=1,4,16,16)")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise BadConfigError(f"--shape '{text}': dimensions must be integers") from None
    if any(d <= 0 for d in shape):
        raise BadConfigError(f"--shape '{text}': dimensions must be positive")
    return name, shape


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: old exporters also list initializers as graph inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def resolve_input_shapes(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]], source: str
) -> dict[str, tuple[int, ...]]:
    """Every input's static shape: from the model, or from an override of the right rank."""
    inputs = {value.name: value for value in graph_inputs(model)}
    for name in overrides:
        if name not in inputs:
            known = ", ".join(inputs) or "none"
            raise BadConfigError(f"--shape {name}=...: {source} has no input '{name}' (inputs: {known})")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            if name not in overrides:
                raise BadConfigError(f"{source}: input '{name}' has unknown rank; pass --shape {name}=...")
            shapes[name] = overrides[name]
            continue
        if name in overrides:
            if len(overrides[name]) != len(dims):
                raise BadConfigError(
                    f"--shape {name}=...: input '{name}' has rank {len(dims)}, "
                    f"got {len(overrides[name])} dimension(s)"
                )
            for axis, (dim, value_override) in enumerate(zip(dims, overrides[name], strict=True)):
                if dim.HasField("dim_value") and dim.dim_value != value_override:
                    raise BadConfigError(
                        f"--shape {name}=...: axis {axis} of input '{name}' is fixed to "
                        f"{dim.dim_value} in the model, got {value_override}"
                    )
            shapes[name] = overrides[name]
            continue
        static = []
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                label = dim.dim_param or "?"
                raise BadConfigError(
                    f"{source}: input '{name}' has dynamic axis {axis} ('{label}'); "
                    f"pass --shape {name}=D0,...,D{len(dims) - 1}"
                )
            static.append(int(dim.dim_value))
        shapes[name] = tuple(static)
    return shapes


def apply_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write static shapes into the graph inputs so every later pass sees them."""
    for value in graph_inputs(model):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in shapes[value.name]:
            shape.dim.add().dim_value = d
