#!/usr/bin/env python3
"""Python client example for mor_server (mor.v1.MorService).

Streams one completion at every fixed recursion depth 1..Nr and one with
adaptive routing, printing each token with the depth it reached and the
per-depth compute the server reports.

    .venv/bin/python clients/python/mor_client.py --address 127.0.0.1:50051 \\
        --tokens 1,2,3 --max-tokens 16

The gRPC stubs are generated from proto/mor/v1/mor.proto with grpcio-tools
(in the project venv) into a cache folder on first use; nothing is committed.
Text input arrives with the tokenizer (--text then works on servers that have
one).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = os.path.join(PROTO_DIR, "mor", "v1", "mor.proto")


def load_stubs():
    """Generates (once per proto version) and imports mor_pb2 / mor_pb2_grpc."""
    from grpc_tools import protoc  # grpcio-tools, from the project venv

    with open(PROTO, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out = os.path.join(tempfile.gettempdir(), f"mor-python-stubs-{digest}")
    if not os.path.exists(os.path.join(out, "mor", "v1", "mor_pb2_grpc.py")):
        os.makedirs(out, exist_ok=True)
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", PROTO])
        if rc != 0:
            sys.exit(f"protoc failed on {PROTO}")
        for pkg in ("mor", os.path.join("mor", "v1")):
            open(os.path.join(out, pkg, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return (importlib.import_module("mor.v1.mor_pb2"),
            importlib.import_module("mor.v1.mor_pb2_grpc"))


def stream(stub, pb, args, depth: int | None) -> None:
    """Streams one completion; prints tokens as they arrive, then the usage."""
    request = pb.GenerateRequest(return_depths=True)
    if args.text is not None:
        request.text = args.text
    else:
        request.tokens.ids.extend(int(t) for t in args.tokens.split(","))
    request.stopping.max_tokens = args.max_tokens
    request.stopping.ignore_eos = args.ignore_eos
    request.sampling.temperature = args.temperature
    if depth is None:
        request.recursion.adaptive.SetInParent()
    else:
        request.recursion.fixed_depth = depth
    label = "adaptive" if depth is None else f"depth {depth}"
    print(f"[{label}] ", end="", flush=True)
    for response in stub.Generate(request, timeout=args.timeout):
        if response.HasField("chunk"):
            chunk = response.chunk
            if chunk.text:
                print(chunk.text, end="", flush=True)
            else:
                for token, d in zip(chunk.token_ids, chunk.depths):
                    print(f"{token}@{d} ", end="", flush=True)
        elif response.HasField("final"):
            final = response.final
            usage = final.usage
            steps = ", ".join(f"d{r + 1}={n}" for r, n in enumerate(usage.token_steps_per_depth))
            print(f"\n  finish={pb.FinishReason.Name(final.finish_reason)} "
                  f"tokens={usage.completion_tokens} steps per depth: {steps} "
                  f"flops={usage.estimated_flops:.3g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tokens", default="1,2,3", help="comma-separated prompt token ids")
    source.add_argument("--text", default=None, help="prompt text (needs a server tokenizer)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    import grpc

    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.MorServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout)
        print(f"{info.architecture}: Nr={info.num_recursions} {info.sharing_strategy} "
              f"{info.router_type} {info.kv_mode} on {info.device} {info.dtype}")
        for depth in list(range(1, info.num_recursions + 1)) + [None]:
            stream(stub, pb, args, depth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
