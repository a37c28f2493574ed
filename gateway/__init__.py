"""The HTTP/JSON gateway: Envoy's grpc_json_transcoder in front of the gRPC server, its
configuration, the process that runs it, and the checkout page it serves."""
