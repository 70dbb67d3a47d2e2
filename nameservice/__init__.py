"""NameService and DNSProvider API, desired-record computation and plans (pure), DNS providers."""
