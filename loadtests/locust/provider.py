"""Paying as a shopper pays: the payment provider (simulators/payments.py) charges the order,
and its signed webhook makes stockcore's receiver confirm the payment (ConfirmPayment from
the receiver's side, never the shopper's). The shopper's page then asks for the order until
it is paid, as the checkout page does (devstack/payments.py).

The charge is reported to Locust as its own request, `Provider/charge` (HTTP), so the
provider's answer time stands apart from stockcore's; the page's reads are GetOrder calls
like any other. Gevent is not imported here: the sleep is given, so this can be tested
without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from loadtests.locust.shop import CURRENCY, Outcome, Placed

CHARGE_REQUEST = "Provider/charge"
# How long the shopper's page waits for the provider's confirmation to pay the order.
CONFIRM_WAIT_S = 10.0
# The provider's page returns the shopper after this; the page then asks this often.
RETURN_S = 0.3
POLL_S = 0.3
_TIMEOUT_S = 10.0


class ProviderCheckout:
    """Charges orders at the provider `provider_url`, each charge reported with `fire`
    (Locust's events.request.fire); the shop waits for the confirmation as its times say."""

    confirm_wait_s = CONFIRM_WAIT_S
    return_s = RETURN_S
    poll_s = POLL_S

    def __init__(
        self,
        provider_url: str,
        fire: Callable[..., None],
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._url = provider_url.rstrip("/") + "/v1/charges"
        self._fire = fire
        self._http = session or requests.Session()
        self._clock = clock

    def charge(self, placed: Placed) -> Outcome:
        """Have the provider capture the order's total: DONE once captured, REJECTED when
        declined, FAILED when the provider did not answer (reported to Locust)."""
        body = {
            "order_id": placed.order_id,
            "customer_id": placed.customer_id,
            "amount": placed.total_minor,
            "currency": CURRENCY,
        }
        # One charge per order whatever the retries: the order id is the key.
        headers = {"Idempotency-Key": f"checkout:{placed.order_id}"}
        started = self._clock()
        status, length, error = 0, 0, None
        try:
            reply = self._http.post(self._url, json=body, headers=headers, timeout=_TIMEOUT_S)
            status, length = reply.status_code, len(reply.content)
            if status not in (200, 402):
                error = RuntimeError(f"the provider answered HTTP {status}")
        except requests.RequestException as exc:
            error = exc
        self._report(started, length, error)
        if error is not None:
            return Outcome.FAILED
        # 402: declined, nothing captured; an expected outcome of paying.
        return Outcome.DONE if status == 200 else Outcome.REJECTED

    def _report(self, started: float, length: int, error: BaseException | None) -> None:
        context: dict[str, Any] = {}
        self._fire(
            request_type="http",
            name=CHARGE_REQUEST,
            response_time=(self._clock() - started) * 1000.0,
            response_length=length,
            exception=error,
            context=context,
        )
