"""Writes protos/inference/grpc_predict_v2.proto, the Open Inference Protocol (KServe V2) gRPC contract.

    python scripts/oip_proto.py

The protocol's published .proto is not on the package registries this project may use,
but KServe's wheel on PyPI carries its compiled form: the serialized FileDescriptorProto
inside kserve/protocol/grpc/grpc_predict_v2_pb2.py. This script downloads that wheel
(pinned), reads the descriptor without executing the module, and prints it back as proto3
source, so every package, message, field number, map, oneof and RPC is the published one.
The original comments are not in a descriptor; the header says where the text came from.

One addition, made here and named in the header: `parameters` on ModelMetadataResponse (6)
and on its TensorMetadata (4), numbered as in MLServer's dataplane.proto, so metadata can
carry a model's labels. The fields are optional on the wire: clients built from KServe's or
Triton's file skip them, MLServer-based clients read them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "protos" / "inference" / "grpc_predict_v2.proto"
KSERVE = "kserve==0.21.0"
MODULE = "kserve/protocol/grpc/grpc_predict_v2_pb2.py"

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
}
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

HEADER = """\
// The Open Inference Protocol (KServe V2) gRPC API: inference.GRPCInferenceService, as
// served by KServe, Triton and MLServer. tlserve answers it beside tlserve.v1.Classifier.
//
// Source: KServe's grpc_predict_v2.proto (https://github.com/kserve/kserve, docs/predict-api/v2),
// Copyright The KServe Authors, Apache License 2.0 (http://www.apache.org/licenses/LICENSE-2.0).
// Rebuilt by scripts/oip_proto.py from the compiled descriptor in the {wheel} wheel
// on PyPI ({module}):
// definitions unchanged (checked by compiling this file back); original comments not included.
// Added: `parameters` on ModelMetadataResponse (6) and its TensorMetadata (4), numbered as in
// MLServer's dataplane.proto, so metadata can list a model's labels; clients without them skip them.
// Do not edit by hand: rerun the script.
"""


def _type_name(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    return field.type_name.removeprefix(f".{package}.")


def _message(message: descriptor_pb2.DescriptorProto, package: str, indent: str) -> list[str]:
    maps = {nested.name: nested for nested in message.nested_type if nested.options.map_entry}
    lines = [f"{indent}message {message.name} {{"]
    for nested in message.nested_type:
        if not nested.options.map_entry:
            lines += _message(nested, package, indent + "  ")
    oneofs: dict[int, list[descriptor_pb2.FieldDescriptorProto]] = {}
    plain = []
    for field in message.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneofs.setdefault(field.oneof_index, []).append(field)
        else:
            plain.append(field)
    for field in plain:
        type_name = _type_name(field, package)
        entry = maps.get(type_name.rsplit(".", 1)[-1])
        if entry is not None and field.label == _REPEATED:
            key, value = (_type_name(f, package) for f in entry.field)
            lines.append(f"{indent}  map<{key}, {value}> {field.name} = {field.number};")
        else:
            label = "repeated " if field.label == _REPEATED else ""
            lines.append(f"{indent}  {label}{type_name} {field.name} = {field.number};")
    for index, fields in oneofs.items():
        lines.append(f"{indent}  oneof {message.oneof_decl[index].name} {{")
        lines += [f"{indent}    {_type_name(f, package)} {f.name} = {f.number};" for f in fields]
        lines.append(f"{indent}  }}")
    lines.append(f"{indent}}}")
    return lines


def render(descriptor: descriptor_pb2.FileDescriptorProto, header: str) -> str:
    """proto3 source of `descriptor` (messages, maps, oneofs and services; no enums or options needed)."""
    if descriptor.enum_type or descriptor.dependency:
        raise SystemExit("the descriptor has enums or imports, which this renderer does not write")
    package = descriptor.package
    lines = [header, 'syntax = "proto3";', "", f"package {package};", ""]
    for service in descriptor.service:
        lines.append(f"service {service.name} {{")
        for method in service.method:
            request = method.input_type.removeprefix(f".{package}.")
            response = method.output_type.removeprefix(f".{package}.")
            lines.append(f"  rpc {method.name}({request}) returns ({response}) {{}}")
        lines += ["}", ""]
    for message in descriptor.message_type:
        lines += [*_message(message, package, ""), ""]
    return "\n".join(lines).rstrip() + "\n"


def add_metadata_parameters(descriptor: descriptor_pb2.FileDescriptorProto) -> None:
    """Adds MLServer's `parameters` maps to ModelMetadataResponse (6) and its TensorMetadata (4)."""
    package = descriptor.package
    metadata = next(m for m in descriptor.message_type if m.name == "ModelMetadataResponse")
    tensor = next(m for m in metadata.nested_type if m.name == "TensorMetadata")
    for message, number, scope in ((tensor, 4, f".{package}.ModelMetadataResponse.TensorMetadata"),
                                   (metadata, 6, f".{package}.ModelMetadataResponse")):
        if any(f.name == "parameters" for f in message.field):
            continue
        entry = message.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
        entry.field.add(name="value", number=2, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=f".{package}.InferParameter")
        message.field.add(name="parameters", number=number, label=_REPEATED,
                          type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=f"{scope}.ParametersEntry")


def descriptor_from_wheel(wheel: Path) -> descriptor_pb2.FileDescriptorProto:
    source = zipfile.ZipFile(wheel).read(MODULE).decode()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
    raise SystemExit(f"{wheel.name}: no serialized descriptor found in {MODULE}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        KSERVE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("kserve-*.whl"))
        descriptor = descriptor_from_wheel(wheel)
    add_metadata_parameters(descriptor)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(descriptor, HEADER.format(wheel=wheel.name, module=MODULE)))
    _check_round_trip(descriptor)
    print(OUT.relative_to(ROOT), "(compiles back to the same definitions)")


def _check_round_trip(published: descriptor_pb2.FileDescriptorProto) -> None:
    """Compiles the written file and compares its definitions with the wheel's."""
    from grpc_tools import protoc  # the dev extra's grpcio-tools

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        code = protoc.main(["protoc", f"--proto_path={OUT.parent.parent}", f"--descriptor_set_out={out}",
                            str(OUT.relative_to(OUT.parent.parent))])
        if code != 0:
            raise SystemExit(f"{OUT}: protoc failed ({code})")
        compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for descriptor in (compiled, published):
        descriptor.ClearField("name")
        descriptor.ClearField("options")
        for message in descriptor.message_type:
            _clear_json_names(message)
    if compiled != published:
        raise SystemExit(f"{OUT}: definitions differ from the published descriptor")


def _clear_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _clear_json_names(nested)


if __name__ == "__main__":
    main()
