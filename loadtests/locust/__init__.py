"""Locust scenarios for stockcore over gRPC: the reference day (day.py), a flash sale
(flash.py) and the throughput knee (ramp.py), on a gevent-patched gRPC user base class
(grpc_user.py) whose interceptor reports every call to Locust.

Only the locustfiles and grpc_user import Locust (which monkey-patches the process for
gevent); the other modules here are plain Python, shared with the report and the tests."""
