"""The gRPC front ends: tlserve.v1.Classifier (native), the Open Inference Protocol, health, security."""
