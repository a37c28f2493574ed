"""Which line prices a CreateOrder may carry: the caller's own, or the catalogue's.

A deployment names a price catalogue (sku -> unit price in one currency) and the token
subjects trusted to price orders themselves (a pricing service that applies discounts).
Every other caller's lines must carry the catalogue's price for their SKU and currency:
a shopper's browser cannot set its own prices. Without a catalogue every caller's prices
are taken as sent (the service that calls stockcore is the price source).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.orders import CreateOrder


@dataclass(frozen=True)
class PriceCatalogue:
    """Unit prices in minor units of `currency`, by SKU."""

    currency: str
    prices: Mapping[str, int]


def check_prices(command: CreateOrder, catalogue: PriceCatalogue) -> None:
    """Raise InvalidArgument unless every line carries the catalogue's price."""
    violations = []
    if command.currency != catalogue.currency:
        violations.append(
            FieldViolation(
                "currency_code",
                f"the catalogue prices in {catalogue.currency}, not {command.currency}",
            )
        )
    for line in command.lines:
        listed = catalogue.prices.get(line.sku)
        if listed is None:
            violations.append(FieldViolation("lines", f"{line.sku} has no catalogue price"))
        elif listed != line.unit_price_minor:
            violations.append(
                FieldViolation(
                    "lines",
                    f"{line.sku} costs {listed} in the catalogue, not {line.unit_price_minor}",
                )
            )
    if violations:
        raise InvalidArgument(violations)
