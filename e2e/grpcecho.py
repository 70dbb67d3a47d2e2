"""A gRPC echo backend for the e2e tests: `python e2e/grpcecho.py CLUSTER ADDRESS PORT`.

Owns one plaintext (h2c) gRPC server answering the unary method `/meshfed.e2e.Echo/Who` with the
cluster name it was started for (raw bytes, no protobuf schema: a generic handler), printing `ready`
once it listens. The tests start it inside a member's network namespace, where that member's gateway
Envoy reaches it. Imports grpcio only.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

SERVICE = "meshfed.e2e.Echo"
METHOD = f"/{SERVICE}/Who"


def serve(cluster: str, address: str, port: int) -> None:
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return cluster.encode()

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    if not server.add_insecure_port(f"{address}:{port}"):
        raise SystemExit(f"cannot listen on {address}:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
