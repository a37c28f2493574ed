"""`python -m devstack` (`make run`): local PostgreSQL and Redis unless the environment
names servers, the migrations and a demo catalogue, then the gRPC server with the HTTP/JSON
gateway, the simulated partners, a fulfilment worker, the simulated payment provider and
the payment webhook receiver and the reconciler beside it; Ctrl-C stops everything.
It writes stockctl's config file for the stack (where stockctl looks for it:
STOCKCORE_CONFIG, else the user's config folder; STOCKCORE_CONFIG=none writes none).
`python -m devstack gateway` runs the gateway alone in front of a server `make run` started,
trusting the development CA."""

from __future__ import annotations

import os

from clients.stockctl_config import config_path
from devstack import config as dev_config
from devstack.stack import StackSettings, dev, gateway_alone
from fulfilment import config as fulfilment_config
from gateway import config as gateway_config
from gateway.envoy import serve as serve_gateway
from payments import config as payments_config
from payments.reconciler import config as reconciler_config
from refunds import config as refunds_config
from runtime import logs
from runtime.settings import command_line, exit_if_invalid
from server import config as server_config


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = command_line("python -m devstack", __doc__, ["run", "gateway"])
    args = parser.parse_args(argv)
    with exit_if_invalid(parser):
        stack = StackSettings(
            dev=dev_config.from_env(),
            server=server_config.from_env(),
            gateway=gateway_config.from_env(),
            fulfilment=fulfilment_config.from_env(),
            payments=payments_config.from_env(),
            reconciler=reconciler_config.from_env(),
            refunds=refunds_config.from_env(),
            stockctl_config=config_path(os.environ)[0],
        )
        logs.configure(stack.server.log_level, stack.server.log_json)
        if args.command == "gateway":
            serve_gateway(gateway_alone(stack.gateway, stack.root))
            return
    dev(stack)


if __name__ == "__main__":
    main()
