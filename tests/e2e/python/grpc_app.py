#!/usr/bin/env python3
"""A real gRPC server and client (grpcio) for the GRPCRoute tests, without generated code:
service `demo.Echo` with raw-bytes messages.

  Say   (unary)            -> "<name>:<request>"
  Count (server streaming) -> "<name>:0" ... "<name>:<n-1>" for request "n"
  Fail  (unary)            -> aborts with the status code named by the request (e.g. NOT_FOUND)

    python3 grpc_app.py serve --name a --port 9090
    python3 grpc_app.py call --target 10.96.0.20:9090 --method Count --data 5
The client prints one JSON line: {"code": "OK", "replies": [...], "details": ""}.
"""

import argparse
import json
import sys
from concurrent import futures

import grpc

SERVICE = "demo.Echo"
ident = lambda b: b  # noqa: E731  raw bytes in, raw bytes out


def serve(name, port):
    def say(req, ctx):
        return f"{name}:{req.decode()}".encode()

    def count(req, ctx):
        for i in range(int(req.decode() or "0")):
            yield f"{name}:{i}".encode()

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode[req.decode()], f"{name} failed as asked")

    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say, ident, ident),
        "Count": grpc.unary_stream_rpc_method_handler(count, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"serving {SERVICE} as {name} on {port}", flush=True)
    server.wait_for_termination()


def call(target, method, data, timeout):
    with grpc.insecure_channel(target) as ch:
        path = f"/{SERVICE}/{method}"
        try:
            if method == "Count":
                stub = ch.unary_stream(path, request_serializer=ident, response_deserializer=ident)
                replies = [r.decode() for r in stub(data.encode(), timeout=timeout)]
            else:
                stub = ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)
                replies = [stub(data.encode(), timeout=timeout).decode()]
            out = {"code": "OK", "replies": replies, "details": ""}
        except grpc.RpcError as e:
            out = {"code": e.code().name, "replies": [], "details": e.details() or ""}
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, default=9090)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--method", required=True)
    c.add_argument("--data", default="")
    c.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a.name, a.port)
    else:
        call(a.target, a.method, a.data, a.timeout)


if __name__ == "__main__":
    sys.exit(main())
