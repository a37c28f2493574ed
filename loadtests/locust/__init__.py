"""Locust scenarios for stockcore over gRPC: the reference day (day.py) and a flash sale
(flash.py), on a gevent-patched gRPC user base class (grpc_user.py) whose interceptor reports
every call to Locust; the report reads Locust's own statistics back (loadtests/locuststats.py).

Only the locustfiles and grpc_user import Locust (which monkey-patches the process for
gevent); the other modules here are plain Python, shared with the report and the tests."""
