"""Certificate issuers, issuance, renewal policy (pure) and delivery (Secrets, SDS)."""
