"""The ledger: closures from Kafka into PostgreSQL, exactly once (docs/ledger.md)."""
