"""Who is calling: TLS on the port, bearer tokens with scopes, and the caller they name."""
