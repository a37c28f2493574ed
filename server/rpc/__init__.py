"""The gRPC edge: servicers that convert and delegate, the error table, interceptors."""
