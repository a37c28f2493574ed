"""The authenticated caller of one call, as the audit trail names it."""

from __future__ import annotations

from dataclasses import dataclass

#: The name recorded for calls to a server that authenticates nobody (STOCKCORE_AUTH_DISABLED).
UNAUTHENTICATED_CALLER = "unauthenticated"


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified token's subject and scopes, the customer it is bound to (a token a
    checkout gateway minted for one shopper), and the client certificate's subject when
    the connection presented one."""

    subject: str
    scopes: frozenset[str]
    customer_id: str | None = None
    expires_at: float = float("inf")
    """Unix time after which the token no longer admits calls."""
    certificate: str | None = None

    @property
    def caller(self) -> str:
        """What movements, status history and events record as the caller: the token's
        subject, the customer it acts for, and the certificate it came over."""
        name = self.account
        if self.certificate is not None:
            name += f" via {self.certificate}"
        return name

    @property
    def account(self) -> str:
        """Whose share of what is bounded per caller (server/shares.py) a call takes: the
        token's subject, or the customer a customer-bound token acts for (a checkout
        gateway signs every shopper's token with its one subject). The certificate a call
        came over does not make another account."""
        if self.customer_id is None:
            return self.subject
        return f"{self.subject} for customer {self.customer_id}"

    def with_certificate(self, certificate: str | None) -> Principal:
        """The same caller, seen over a connection whose client certificate names
        `certificate` (None: no client certificate)."""
        if certificate == self.certificate:
            return self
        return Principal(self.subject, self.scopes, self.customer_id, self.expires_at, certificate)


#: Every call to a server without authentication runs as this principal.
ANONYMOUS = Principal(UNAUTHENTICATED_CALLER, frozenset())
