"""Tooling, not the service: what runs the service on a laptop and checks it.

- `kafka`: `LocalKafka`, a throw-away single-node Kafka broker (jars from
  Maven Central, KRaft, loopback only), used by `accountant dev`, the tests
  and the benchmarks;
- `simulator`: a gateway fleet publishing realistic sessions (`accountant simulate`);
- `oracle`: what the service must conclude from a simulation, and the checks;
- `postgres`: `LocalPostgres`, a throw-away PostgreSQL (Debian's package, loopback
  only), and `ledger`: the ledger part of `accountant dev` (PostgreSQL and one
  `accountant ledger`);
- `ledger_check`: the ledger's rows against a simulation's oracle (`simulate --verify`);
- `kafka_security`: a CA, certificates and a SCRAM user made at run time, and
  the SASL_SSL/SSL listeners of a local broker (`accountant dev --secure`).
- `processes`: what the local servers share: loopback ports, children that
  die with their parent, and their start/stop life (`ServerProcess`).

The service (rules, agents, tables, web) never imports this package; only the
CLI's `dev`, `broker` and `simulate` commands do.
"""
