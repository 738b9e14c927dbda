"""Fault: a rebalance storm (issue 20). Billing must stay exact while workers
join, leave and crash, as at every deploy, autoscale and node loss.

One worker stays up throughout; extra workers of the same consumer group are
started (one or two at once), SIGTERMed and SIGKILLed every 2-4 s (a seeded
sequence; a kill may land while the victim still starts or recovers its
tables) while simulated gateways publish at a steady rate. Then the oracle
checks every closure and every rejection on the topics, and the billing
ledger (`accountant ledger`, running throughout) per session and per tenant:
nothing lost, nothing wrong, and with `exactly_once` no closure and no
rejection repeated. Every tenant has a budget the run crosses: each tenant's
month must equal the oracle's sum of its closures, both as the owner
answers and as a replay of the committed usage deltas gives it, and every
expected alert arrive (once, under `exactly_once`).

Each run takes one processing guarantee (the `guarantee` fixture, given to
every worker as `ACCOUNTANT_PROCESSING_GUARANTEE`). The short storm runs with the fault suite; the long
one (marker `long`) only when selected with `-m long`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.dev.simulator import Simulation, SimulationConfig, fit_to_rate, new_run_id
from app.rules.usage import period_of
from tests.faults.harness import Storm, Timeline, finish, publish_piece
from tests.support.budgets import alerts_by_id, expected_alerts, limits_under, month_tokens, put_budget
from tests.support.clock import now_micros
from tests.support.deployment import Deployment
from tests.support.ledger import simulated
from tests.support.ledger_processes import LedgerDeployment
from tests.support.tenant_audit import audit_report
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.postgres]

SEED = 2020
#: The gateways' steady send rate, events/s: well under one worker's
#: throughput, so the workers keep up between rebalances.
RATE = 3000
#: Seconds of input, so of churn: CI's storm, and the long tier's (issue 20: at least 60 s).
SHORT_SECS = 25
LONG_SECS = 75
#: Events per session of the simulator's default mix (measured), to size a run by its duration.
EVENTS_PER_SESSION = 10
#: The group changes every 2-4 s, up to 3 extra workers at once: more often than
#: the issue's reproduction (every 4-10 s), which lost rounds in 3 of 5 runs of
#: 42 s. Every 1-3 s with up to 4 extras was tried: the group then spent most
#: of the storm rebalancing and completed fewer assignments (4-7 per run, each
#: a chance to skip input), the publisher starved of CPU.
INTERVAL_SECS = (2.0, 4.0)
MAX_EXTRAS = 3
#: How long the oracle waits for the outputs, and then for the billing ledger.
#: Generous (a loaded machine), and the test's timeout is longer than every
#: wait added up, so a stuck run still ends with the oracle's figures.
OUTPUT_WAIT_SECS = 240
#: Each completed rebalance restarts the reading of every partition (Faust's
#: assignment is eager): twice `accountant dev`'s 8, twice the chances.
PARTITIONS = 16


def owns_every_partition(worker: WorkerProcess) -> bool:
    try:
        return worker.owned_partitions() == frozenset(range(PARTITIONS))
    except OSError:  # rebalancing: the API may refuse for a moment
        return False


def run_storm(deployment: Deployment, ledgers: LedgerDeployment, report: Callable[[dict], None],
              guarantee: str, seconds: int) -> None:
    timeline = Timeline()
    deployment.settings.update({"ACCOUNTANT_PROCESSING_GUARANTEE": guarantee,
                                "ACCOUNTANT_PARTITIONS": str(PARTITIONS)})
    ledgers.partitions = PARTITIONS
    config = SimulationConfig(sessions=RATE * seconds // EVENTS_PER_SESSION, seed=SEED, run_id=new_run_id())
    simulation = Simulation(fit_to_rate(config, RATE))
    ledger, stamper = simulated(simulation)
    events = list(simulation.events())
    deployment.create_topics()
    ledgers.ledger().start().wait_ready()
    steady = deployment.worker("steady").start().wait_ready()
    expected = month_tokens(simulation)
    limits = limits_under(expected)
    for tenant_id, limit in limits.items():
        put_budget(steady, tenant_id, limit)
    timeline("ready, budgets set")

    storm = Storm(deployment, seed=SEED, max_extras=MAX_EXTRAS, interval_secs=INTERVAL_SECS)
    with ThreadPoolExecutor(max_workers=1) as pool:
        publishing = pool.submit(publish_piece, deployment, events, stamper, RATE)
        storm.run(until=publishing.done, timeline=timeline)
        published = publishing.result()
    timeline("published")
    storm.calm()
    timeline("extras gone")
    # Killed members leave only at their session timeout; then one more rebalance.
    wait_for("the steady worker to own every partition", lambda: steady.check_alive() or owns_every_partition(steady),
             timeout=180, interval=0.5, observed=steady.log_tail)
    timeline("steady owns all")
    storm.read_gaps(steady)
    verdict = finish(deployment, ledger, simulation, faults=storm.member_changes, report=report, stats_from=steady,
                     timeline=timeline, billing=ledgers, timeout=OUTPUT_WAIT_SECS,
                     extra={"publish_secs": round(published.seconds, 1), "publish_rate": round(published.rate),
                            **storm.figures()})
    # finish() fails on any problem, and under exactly_once on any repeated closure or rejection.
    assert verdict.figures["wrong"] == 0

    # Tenants: every month as the oracle sums it; every alert, and once under exactly_once.
    usages: dict[str, dict] = {}

    def usage_settled() -> bool:
        usages.update({tenant_id: steady.get(f"/tenants/{tenant_id}/usage")[1] for tenant_id in expected})
        return all(usages[tenant_id].get("usage_tokens") == tokens for tenant_id, tokens in expected.items())

    # On failure, where the usage went: a replay of the committed deltas beside the changelog's states.
    wait_for("every tenant's usage to equal the oracle's", usage_settled, timeout=60,
             observed=lambda: {"live": usages, "audit": audit_report(deployment.config, expected)})
    # The committed deltas alone, replayed by the pure rules, give the oracle's
    # months: nothing lost or repeated on the way to the owners.
    audit = audit_report(deployment.config, expected)
    assert all(audit[tenant_id]["replayed"] == tokens for tenant_id, tokens in expected.items()), audit
    if guarantee == "exactly_once":
        assert all(usage["live_sessions"] == 0 for usage in usages.values()), usages
    by_id = alerts_by_id(deployment.bootstrap, deployment.config.alerts_topic,
                         expected_alerts(expected, limits, period_of(now_micros())))
    copies = {alert_id: len(found) for alert_id, found in by_id.items()}
    report({"alerts": len(copies), "alert_copies": sum(copies.values())})
    if guarantee == "exactly_once":
        assert all(count == 1 for count in copies.values()), copies


@pytest.mark.timeout(1200)
def test_rebalance_storm(deployment: Deployment, deployment_ledger: LedgerDeployment,
                         fault_figures: Callable[[dict], None], guarantee: str) -> None:
    run_storm(deployment, deployment_ledger, fault_figures, guarantee, SHORT_SECS)


@pytest.mark.long
@pytest.mark.timeout(1500)
def test_long_rebalance_storm(deployment: Deployment, deployment_ledger: LedgerDeployment,
                              fault_figures: Callable[[dict], None], guarantee: str) -> None:
    run_storm(deployment, deployment_ledger, fault_figures, guarantee, LONG_SECS)
