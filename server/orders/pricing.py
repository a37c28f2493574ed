"""The deployment's price policy (server/domain/pricing.py): the catalogue file, read again
when it changes, and the subjects trusted to price orders themselves."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from server.domain.orders import CreateOrder
from server.domain.pricing import PriceCatalogue, check_prices

# How often the catalogue file is looked at again.
CHECK_S = 5.0


def parse_catalogue(document: object) -> PriceCatalogue:
    """A PriceCatalogue from the checkout page's catalogue document
    ({"currency": ..., "products": [{"sku": ..., "price_minor": ...}, ...]})."""
    if not isinstance(document, dict) or not isinstance(document.get("currency"), str):
        raise ValueError("a catalogue is an object with a currency and products")
    prices: dict[str, int] = {}
    for product in document.get("products") or ():
        if not isinstance(product, dict):
            raise ValueError("each product is an object")
        sku, price = product.get("sku"), product.get("price_minor")
        if not isinstance(sku, str) or not isinstance(price, int) or price < 0:
            raise ValueError(f"product {product!r} needs a sku and a price_minor >= 0")
        prices[sku] = price
    return PriceCatalogue(document["currency"], prices)


class Pricing:
    """Checks a CreateOrder's prices against the catalogue unless its caller prices
    orders itself."""

    def __init__(self, catalogue_file: str, trusted_subjects: tuple[str, ...]) -> None:
        self._path = Path(catalogue_file) if catalogue_file else None
        self._trusted = frozenset(trusted_subjects)
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._catalogue: PriceCatalogue | None = None
        if self._path is not None:
            self._reload()  # a bad file fails start-up, not the first order

    @property
    def checks(self) -> bool:
        """Whether a catalogue is configured."""
        return self._path is not None

    def _reload(self) -> None:
        assert self._path is not None
        found = os.stat(self._path)
        stamp = (found.st_mtime_ns, found.st_size)
        if stamp != self._stamp:
            self._catalogue = parse_catalogue(json.loads(self._path.read_text()))
            self._stamp = stamp

    def catalogue(self) -> PriceCatalogue | None:
        """The catalogue as the file holds it now (looked at every CHECK_S at most; a file
        that became unreadable keeps the last good catalogue)."""
        if self._path is not None and time.monotonic() - self._checked >= CHECK_S:
            self._checked = time.monotonic()
            try:
                self._reload()
            except (OSError, ValueError):
                pass
        return self._catalogue

    def check(self, command: CreateOrder, subject: str, customer_bound: bool) -> None:
        """Raise InvalidArgument when the caller may not price this order as it did."""
        catalogue = self.catalogue()
        if catalogue is None:
            return
        if subject in self._trusted and not customer_bound:
            return
        check_prices(command, catalogue)
