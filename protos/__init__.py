"""Wire messages and gRPC services; the generated code lives beside each .proto."""
