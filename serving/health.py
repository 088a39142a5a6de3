"""A gRPC health probe (grpc.health.v1): is the server at `address` SERVING? For container health checks."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["probe"]


def probe(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The serving status of `service` ("" = the whole server) at `address`, e.g. "SERVING".

    "UNREACHABLE" when nothing answers within `timeout` seconds, "UNKNOWN_SERVICE" for a name the server
    does not know.
    """
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "UNKNOWN_SERVICE"
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
