"""The development stack: a tool, not part of the server. Project-owned PostgreSQL, Redis and
server processes (servers.py), development credentials (credentials.py), the demo catalogue
(demo.py), the checkout page's session and token (page_session.py) and its simulated payment
provider (payments.py), and `python -m devstack` (`make run`), which starts them with the
gateway, the simulators, a fulfilment worker and the payment webhook receiver (stack.py)."""
