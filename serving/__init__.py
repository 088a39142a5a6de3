"""Serving: the model repository, dynamic batching, held-out evaluation, metrics, and the wire formats.

Runs on numpy, ONNX Runtime and grpcio; never imports torch.
"""

from serving.batcher import BatchResult, DynamicBatcher
from serving.heldout import HeldOutData, HeldOutRecording
from serving.observability import Metrics, MetricsInterceptor, start_metrics_server
from serving.repository import ModelLease, ModelRepository, ModelStatus, ReloadReport, VersionStatus
from serving.status import ErrorInterceptor, grpc_status

__all__ = [
    "BatchResult",
    "DynamicBatcher",
    "ErrorInterceptor",
    "HeldOutData",
    "HeldOutRecording",
    "Metrics",
    "MetricsInterceptor",
    "ModelLease",
    "ModelRepository",
    "ModelStatus",
    "ReloadReport",
    "VersionStatus",
    "grpc_status",
    "start_metrics_server",
]
