"""The throughput knee with Locust: offer more orders per second, step by step, until p99
crosses a bound; report the highest rate held.

    locust -f loadtests/locust/ramp.py --headless --host 127.0.0.1:50051 \
        --ramp-start 100 --ramp-step 100 --step-seconds 20 --p99-bound 100

Each user places --per-user-rate orders per second on average (Poisson arrivals), so a step
offering R orders/s runs R / per-user-rate users. With --ramp-mode checkout an operation is a
CreateOrder followed by its ConfirmPayment, and is also reported as one "flow checkout"
request whose time is the two calls together; the staircase watches that.

A step is held when at least 95% of the offered rate was served with p99 within the bound and
no failures. The run stops after two steps in a row over the bound, or one that served less
than 70% of the offered rate. Sold-out rejections (there should
be none: the catalogue is deep) count as successes here. The live decision uses the latency
histograms the workers report every few seconds; `make load-knee` recomputes every step
exactly from the raw call log afterwards.
"""

from __future__ import annotations

# First: patches gRPC for gevent before anything opens a channel.
from loadtests.locust.grpc_user import GrpcUser  # isort: skip

import math
import random
import time
from typing import Any

import gevent
import grpc
from locust import LoadTestShape, constant, events, task

from loadtests.locust import calllog
from loadtests.locust.interceptor import RejectionMode, RejectionPolicy
from loadtests.locust.options import add_common_options, catalogue, write_plan
from loadtests.locust.pacing import PoissonPacing
from loadtests.locust.shop import Api, OrderIds, Outcome, make_shop, tally
from loadtests.locust.steps import (
    Staircase,
    StepResult,
    find_knee,
    held,
    histogram_difference,
    histogram_percentile,
)

_REJECTED = frozenset({grpc.StatusCode.FAILED_PRECONDITION})
REJECTIONS = RejectionPolicy(
    expected={
        "OrderService/CreateOrder": _REJECTED,
        "OrderService/ConfirmPayment": _REJECTED,
        "InventoryService/Reserve": _REJECTED,
        "InventoryService/Commit": _REJECTED,
    },
    mode=RejectionMode.SUCCESS,
)
CHECKOUT = ("flow", "checkout")
"""The request type and name of a whole checkout (create, then pay)."""
_CREATE = {Api.ORDERS: "OrderService/CreateOrder", Api.INVENTORY: "InventoryService/Reserve"}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_common_options(parser)
    group = parser.add_argument_group("knee")
    group.add_argument("--ramp-mode", choices=["create", "checkout"], default="create")
    group.add_argument("--ramp-start", type=float, default=100.0, help="first offered rate /s")
    group.add_argument("--ramp-step", type=float, default=100.0, help="added per step /s")
    group.add_argument("--ramp-top", type=float, default=5000.0, help="last offered rate /s")
    group.add_argument("--step-seconds", type=float, default=20.0)
    group.add_argument("--settle-seconds", type=float, default=5.0, help="unmeasured per step")
    group.add_argument("--p99-bound", type=float, default=100.0, help="ms")
    group.add_argument("--per-user-rate", type=float, default=10.0, help="operations/s per user")


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    if environment.parsed_options is not None:
        calllog.install(environment, tally)


def measured(options: Any) -> tuple[str, str]:
    """The (request type, name) the staircase watches."""
    if options.ramp_mode == "checkout":
        return CHECKOUT
    return "grpc", _CREATE[Api(options.api)]


class RampBuyer(GrpcUser):
    """Places --per-user-rate orders per second, paying them in checkout mode."""

    rejections = REJECTIONS
    wait_time = constant(0)  # replaced per user in on_start

    def on_start(self) -> None:
        super().on_start()
        self.options = self.environment.parsed_options
        self.shop = make_shop(Api(self.options.api), self.inventory, self.orders)
        self.skus = catalogue(self.options.catalogue_prefix, self.options.catalogue_size)
        self.ids = OrderIds(self.options.run_tag)
        self.checkout = self.options.ramp_mode == "checkout"
        # A window long enough that no hold expires while the staircase runs.
        self.window = max(self.options.payment_window, 600.0)
        pacing = PoissonPacing(1.0 / self.options.per_user_rate)
        self.wait_time = pacing  # type: ignore[method-assign]
        gevent.sleep(pacing.first_delay())

    @task
    def order(self) -> None:
        """One order, paid in checkout mode."""
        began = time.perf_counter()
        started_at = time.time()
        outcome, placed = self.shop.place(
            self.ids.next(), f"cust-{random.randrange(100_000)}", [(random.choice(self.skus), 1)],
            self.window,
        )  # fmt: skip
        if not self.checkout or placed is None:
            return
        outcome = self.shop.pay(placed)
        self.environment.events.request.fire(
            request_type=CHECKOUT[0],
            name=CHECKOUT[1],
            response_time=(time.perf_counter() - began) * 1000.0,
            response_length=0,
            exception=None if outcome in (Outcome.DONE, Outcome.REJECTED) else outcome.value,
            context={"code": "OK" if outcome is Outcome.DONE else outcome.value.upper()},
            start_time=started_at,
            response=None,
            url=None,
        )


class Staircased(LoadTestShape):
    """Users for each step's offered rate; stops after the first step that is not held."""

    def __init__(self) -> None:
        super().__init__()
        self._stairs: Staircase | None = None
        self._step = -1
        self._begin: tuple[float, int, int, dict[int, int]] | None = None
        self._results: list[StepResult] = []
        self._plan: dict[str, Any] = {}

    def _snapshot(self, options: Any) -> tuple[float, int, int, dict[int, int]]:
        assert self.runner is not None
        entry = self.runner.stats.get(measured(options)[1], measured(options)[0])
        return time.time(), entry.num_requests, entry.num_failures, dict(entry.response_times)

    def _close_step(self, options: Any) -> StepResult | None:
        assert self._stairs is not None
        if self._begin is None:
            return None
        end = self._snapshot(options)
        began, requests, failures, histogram = self._begin
        seconds = max(end[0] - began, 1e-9)
        result = StepResult(
            offered=self._stairs.rates[self._step],
            achieved=(end[1] - requests - (end[2] - failures)) / seconds,
            p99_ms=histogram_percentile(histogram_difference(end[3], histogram), 99),
            failures=end[2] - failures,
        )
        self._results.append(result)
        print(
            f"step {result.offered:,.0f}/s offered: {result.achieved:,.0f}/s served, "
            f"p99 {result.p99_ms:.0f} ms, {result.failures} failures",
            flush=True,
        )
        return result

    def tick(self) -> tuple[int, float] | None:
        """Users for the current step."""
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        if self._stairs is None:
            self._stairs = Staircase(
                start=options.ramp_start,
                step=options.ramp_step,
                top=options.ramp_top,
                step_s=options.step_seconds,
                settle_s=options.settle_seconds,
            )
            self._plan = {
                "scenario": "knee",
                "mode": options.ramp_mode,
                "api": options.api,
                "started_at": time.time() - self.get_run_time(),
                "step_s": self._stairs.step_s,
                "settle_s": self._stairs.settle_s,
                "p99_bound_ms": options.p99_bound,
                "measured": measured(options)[1],
                "rates": [],
            }
        run_s = self.get_run_time()
        step = self._stairs.step_at(run_s)
        if step != self._step:
            result = self._close_step(options)
            # These histograms lag the workers by a few seconds, so only a clear verdict stops
            # the run: p99 over the bound (or failures) two steps in a row, or less than 70% of
            # the offered rate served. The exact verdict comes from the raw call log afterwards.
            last_two = self._results[-2:]
            over_bound = len(last_two) == 2 and all(
                held(r, options.p99_bound, 0.0) is not None for r in last_two
            )
            if result is not None and (over_bound or result.achieved < 0.7 * result.offered):
                return self._finish(options)
            if step is None:
                return self._finish(options)
            self._step, self._begin = step, None
            self._plan["rates"].append(self._stairs.rates[step])
            write_plan(options.calls_dir, self._plan)
        if self._begin is None and run_s - step * self._stairs.step_s >= self._stairs.settle_s:
            self._begin = self._snapshot(options)
        users = math.ceil(self._stairs.rates[step] / options.per_user_rate)
        return users, max(50.0, users / 2.0)

    def _finish(self, options: Any) -> None:
        knee = find_knee(self._results, options.p99_bound, 0.95)
        best = knee.sustained
        print(
            "knee (live, from Locust's histograms): "
            + (
                f"held {best.offered:,.0f}/s offered, {best.achieved:,.0f}/s served, "
                f"p99 {best.p99_ms:.0f} ms"
                if best
                else "not even the first step was held"
            )
            + f"; next step: {knee.reason}",
            flush=True,
        )
        return None
