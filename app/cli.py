"""The `accountant` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from app import logs
from app.dev.simulator import simulate_command
from app.preflight import KafkaCheckError, run_kafka_check
from app.settings import Settings, SettingsError, exposure_warnings, load_settings

# Named, not __name__: run as `python -m app.cli` that would be "__main__".
log = logging.getLogger("app.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """usage-accountant: exact, billable usage from LLM-gateway session events.

    Settings come from ACCOUNTANT_* environment variables (see README).
    """


def _run_worker(settings: Settings) -> None:
    """Check the cluster, create the topics, build the app and run its worker until stopped."""
    import faust
    import mode.loop

    from app.ledger.connection import describe_dsn
    from app.service import build_app
    from app.topics import ensure_topics

    logs.configure(settings)
    for warning in exposure_warnings(settings):
        log.warning("%s", warning)
    try:
        run_kafka_check(settings)
    except KafkaCheckError as error:
        # Through logging, so that a JSON log collector gets it as one record too.
        log.critical("%s", error)
        raise SystemExit(1) from None
    asyncio.run(ensure_topics(settings))
    service = build_app(settings)
    app = service.app

    @app.task
    async def announce() -> None:
        while not service.accountant.recovered:
            await asyncio.sleep(0.2)
        url = f"{settings.advertised_url}/"
        ledger = f"; ledger database {describe_dsn(settings.ledger_dsn)}" if settings.ledger_dsn else ""
        ready = f"usage-accountant ready: dashboard {url}  (broker {settings.broker}{ledger})"
        if settings.log_format == "json":
            log.info("%s", ready)
        else:
            # Faust redirects sys.stdout/stderr into its log; a person wants this line plain.
            print(ready, file=sys.__stderr__, flush=True)

    # uvloop for every loop of the worker, the consumer thread's too: 10-15 %
    # less CPU per event (docs/benchmarks.md). A fresh loop: asyncio.run above
    # closed its own.
    mode.loop.use("uvloop")
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = faust.Worker(app, loglevel=settings.log_level, logging_config=logs.logging_config(settings), quiet=True)
    # At level warning or above Faust adds a terminal spinner that turns every
    # log call of every library into a record: it sets the root logger to
    # DEBUG. That cost 15-25% of the worker's CPU; a service needs no spinner.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        if service.accountant.failure is not None:
            # With json the failure is already a record ("stopping the worker"): no plain line after it.
            raise SystemExit(1 if settings.log_format == "json" else
                             f"usage-accountant: the worker stopped because {service.accountant.failure}")


@main.command()
def worker() -> None:
    """Run one worker against the configured broker (ACCOUNTANT_BROKER)."""
    settings = load_settings()
    if not settings.bootstrap_servers:
        raise SettingsError("ACCOUNTANT_BROKER is not set (host:port[,host:port]); or use `accountant dev`")
    _run_worker(settings)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Where the local broker and the worker keep their files.")
@click.option("--secure", is_flag=True,
              help="Run the local broker with a SASL_SSL listener (a CA, certificates and a SCRAM user made "
                   "in DATA_DIR/kafka/tls) and connect the worker over it.")
def dev(data_dir: Path, secure: bool) -> None:
    """Run the service on a laptop: a local Kafka broker (unless ACCOUNTANT_BROKER is set),
    one worker and its web dashboard. Ctrl-C or SIGTERM stops all of it."""
    from app.dev.kafka import LocalKafka

    overrides = {} if "ACCOUNTANT_DATA_DIR" in os.environ else {"data_dir": str(data_dir / "worker")}
    settings = load_settings(**overrides)
    broker = None
    if secure and settings.bootstrap_servers:
        raise SettingsError("--secure starts a local broker with a SASL_SSL listener; unset ACCOUNTANT_BROKER")
    if not settings.bootstrap_servers:
        security = None
        if secure:
            from app.dev.kafka_security import BrokerSecurity

            security = BrokerSecurity(data_dir / "kafka" / "tls")
        click.echo("starting a local Kafka broker (first run downloads it with Maven) ...", err=True)
        broker = LocalKafka(workdir=data_dir / "kafka", security=security)
        broker.start()
        click.echo(f"local Kafka at {broker.bootstrap}; log {broker.log_path}", err=True)
        security_env = security.settings_env() if security is not None else {}
        settings = load_settings(**overrides, broker=broker.bootstrap,
                                 **(security.settings_overrides() if security is not None else {}))
        # So `accountant simulate` in another shell can be told where to go.
        (data_dir / "broker.txt").write_text(broker.bootstrap + "\n")
        (data_dir / "kafka.env").write_text("".join(f"{name}={value}\n" for name, value in
                                                    {"ACCOUNTANT_BROKER": broker.bootstrap, **security_env}.items()))
        if security is not None:
            click.echo(f"SASL_SSL, user {security.username}; clients in another shell: "
                       f"set -a; . {data_dir / 'kafka.env'}; set +a", err=True)
    ledger = _start_dev_ledger(settings, data_dir)
    # The worker's dashboard shows whether this ledger caught up.
    settings = settings.model_copy(update={"ledger_dsn": ledger.dsn})
    # Faust handles SIGINT; make SIGTERM stop it the same way.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        _run_worker(settings)
    finally:
        ledger.stop()
        if broker is not None:
            broker.stop(timeout=10)  # a dev broker need not shut down gracefully


def _start_dev_ledger(settings: Settings, data_dir: Path):
    """A local PostgreSQL (unless ACCOUNTANT_LEDGER_DSN is set) and one ledger process."""
    from app.dev.ledger import start_dev_ledger

    data_dir.mkdir(parents=True, exist_ok=True)
    return start_dev_ledger(settings, data_dir)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Keep the broker's data here (default: a temporary folder).")
@click.option("--port", type=int, default=None, help="Loopback port (default: a free one).")
@click.option("--secure", is_flag=True, help="SASL_SSL on the port (TLS files and user in DATA_DIR/tls); prints "
                                             "the ACCOUNTANT_KAFKA_* settings of a client.")
def broker(data_dir: Path | None, port: int | None, secure: bool) -> None:
    """Run only the local Kafka broker, in the foreground."""
    from app.dev.kafka import LocalKafka

    with contextlib.ExitStack() as cleanup:
        security = None
        if secure:
            from app.dev.kafka_security import BrokerSecurity

            tls_dir = data_dir / "tls" if data_dir else Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
            security = BrokerSecurity(tls_dir)
        kafka = cleanup.enter_context(LocalKafka(workdir=data_dir, port=port, security=security))
        click.echo(kafka.bootstrap)
        if security is not None:
            for name, value in security.settings_env().items():
                click.echo(f"{name}={value}")
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.run_until_complete(stop.wait())


@main.command()
@click.option("--accept-gap", "accepted_gaps", multiple=True, metavar="PARTITION:FROM-TO",
              help="Resume a partition stopped at this gap (closures deleted before the ledger wrote them, or a "
                   "recreated topic), as the ledger's GAP log line prints it; recorded in ledger_gaps. Repeatable.")
def ledger(accepted_gaps: tuple[str, ...]) -> None:
    """Write closures into the PostgreSQL ledger (ACCOUNTANT_LEDGER_DSN), exactly once."""
    from app.ledger.gaps import accepted_gap_flag
    from app.ledger.service import main as run_ledger

    try:
        flags = [accepted_gap_flag(text) for text in accepted_gaps]
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    settings = load_settings()
    if not settings.bootstrap_servers:
        raise SettingsError("ACCOUNTANT_BROKER is not set (host:port[,host:port])")
    if not settings.ledger_dsn:
        raise SettingsError("ACCOUNTANT_LEDGER_DSN is not set (nor ACCOUNTANT_LEDGER_DSN_FILE) "
                            "(e.g. postgresql://user@host:5432/ledger)")
    run_ledger(settings, flags)


# --------------------------------------------------------------------------
# What billing runs against the ledger's database. Each connects with the
# ledger's timeouts, and says any database problem in one line.

_DSN_OPTION = click.option("--dsn", default=None,
                           help="Ledger database without a password (`ps` shows it to every user); default: "
                                "ACCOUNTANT_LEDGER_DSN or ACCOUNTANT_LEDGER_DSN_FILE. A password goes in "
                                "ACCOUNTANT_LEDGER_DSN_FILE or ~/.pgpass.")
_BY_OPTION = click.option("--by", "by_whom", default=None, help="Who does this, for the record (default: the "
                                                                "login name).")


def _ledger_dsn(dsn: str | None) -> tuple[str, Settings]:
    """The ledger's DSN (``--dsn``, else the settings') and the settings."""
    from app.ledger.connection import dsn_has_secret

    settings = load_settings()
    if dsn and dsn_has_secret(dsn):
        raise click.UsageError("--dsn holds a password, which `ps` shows to every user of this machine: put the "
                               "DSN in a file and set ACCOUNTANT_LEDGER_DSN_FILE to it (or use ~/.pgpass)")
    dsn = dsn or settings.ledger_dsn
    if not dsn:
        raise click.UsageError("no ledger database: set ACCOUNTANT_LEDGER_DSN (or ACCOUNTANT_LEDGER_DSN_FILE) or "
                               "pass --dsn (the ledger of a running `accountant dev`: --dsn \"$(cat "
                               "data/ledger-dsn.txt)\")")
    return dsn, settings


@contextlib.contextmanager
def _ledger_database(dsn: str | None, application_name: str):
    """A connection to the ledger's database; its problems as one-line errors."""
    from app.ledger.adjustments import AdjustmentRefused
    from app.ledger.connection import DatabaseTimeouts, LedgerUnavailable, command_connection
    from app.ledger.periods import PeriodRefused

    dsn, settings = _ledger_dsn(dsn)
    try:
        with command_connection(dsn, DatabaseTimeouts.from_settings(settings), application_name) as connection:
            yield connection
    except (LedgerUnavailable, AdjustmentRefused, PeriodRefused) as error:
        raise click.ClickException(str(error)) from None


def _month(context: click.Context, parameter: click.Parameter, value: str | None):
    from app.rules.periods import parse_month

    try:
        return None if value is None else parse_month(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _instant(context: click.Context, parameter: click.Parameter, value: str | None):
    from app.ledger.closure_row import parse_instant

    try:
        return None if value is None else parse_instant(value)
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{value!r} is not an RFC 3339 timestamp with offset, e.g. "
                                 "2026-12-03T09:00:00Z") from None


@main.command()
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--from", "from_day", type=click.DateTime(["%Y-%m-%d"]), help="First UTC day (YYYY-MM-DD), included.")
@click.option("--to", "to_day", type=click.DateTime(["%Y-%m-%d"]), help="Last UTC day (YYYY-MM-DD), included.")
@click.option("--period", callback=_month, help="A billing period (YYYY-MM): the closures and adjustments booked "
                                                "in it, late ones included. Instead of --from/--to.")
@click.option("--as-of", "as_of", callback=_instant, metavar="TIMESTAMP",
              help="Only what the ledger held then (RFC 3339): reproduces an earlier report.")
@click.option("--by", type=click.Choice(["total", "model", "provider", "day", "month"]), default="total",
              show_default=True, help="Grouping; model means provider and model; day and month of closed_at.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@_DSN_OPTION
def usage(tenant: str, from_day, to_day, period, as_of, by: str, fmt: str, dsn: str | None) -> None:
    """Print a tenant's usage from the ledger: closures, adjustments, and both together (billed)."""
    from app.ledger.usage import UsageQuery, fetch_usage
    from app.ledger.usage_format import render_usage

    try:
        query = UsageQuery(tenant, from_day.date() if from_day else None, to_day.date() if to_day else None, by,
                           period, as_of)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    with _ledger_database(dsn, "accountant-usage") as connection:
        rows = fetch_usage(connection, query)
    click.echo(render_usage(query, rows, fmt), nl=False)


@main.command()
@_DSN_OPTION
def migrate(dsn: str | None) -> None:
    """Bring the ledger's database schema up to date (`accountant ledger` does it at start too)."""
    import psycopg

    from app.ledger.connection import DatabaseTimeouts, describe_dsn
    from app.ledger.database_errors import describe_database_error
    from app.ledger.migrations import MigrationError
    from app.ledger.postgres_store import PostgresLedgerStore

    dsn, settings = _ledger_dsn(dsn)

    async def run() -> list[str]:
        store = PostgresLedgerStore(dsn, DatabaseTimeouts.from_settings(settings))
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(run())
    except MigrationError as error:
        raise click.ClickException(str(error)) from None
    except psycopg.Error as error:
        raise click.ClickException(f"cannot migrate the ledger's database ({describe_dsn(dsn)}): "
                                   f"{describe_database_error(error)}") from None
    click.echo(f"applied {', '.join(applied)}" if applied else "the ledger's schema is up to date")


@main.command()
@click.option("--tenant", help="Tenant of the closure.")
@click.option("--closure-id", help="The closure corrected (its closure_id).")
@click.option("--tokens", type=int, help="Tokens added to its billed total; negative: taken off.")
@click.option("--reason", help="Why, for the record.")
@click.option("--idempotency-key", help="The same key again is the same adjustment: ignored, and said so "
                                        "(default: a fresh one, printed).")
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Many adjustments: a CSV file with columns tenant_id, closure_id, token_count, reason "
                   "[, idempotency_key]; all written or none. Instead of the options above.")
@_BY_OPTION
@_DSN_OPTION
def adjust(tenant: str | None, closure_id: str | None, tokens: int | None, reason: str | None,
           idempotency_key: str | None, csv_file: Path | None, by_whom: str | None, dsn: str | None) -> None:
    """Correct closures with adjustment rows (append-only; a closure row never changes)."""
    import getpass
    import uuid

    from app.ledger.adjustments import Adjustment, AdjustmentRefused, read_adjustments_csv, record_adjustments

    single = (tenant, closure_id, tokens, reason)
    if csv_file is not None:
        if any(value is not None for value in (*single, idempotency_key)):
            raise click.UsageError("--csv replaces --tenant, --closure-id, --tokens, --reason and --idempotency-key")
        try:
            adjustments = read_adjustments_csv(csv_file)
        except AdjustmentRefused as error:
            raise click.ClickException(str(error)) from None
    elif any(value is None for value in single):
        raise click.UsageError("give --tenant, --closure-id, --tokens and --reason (or --csv FILE)")
    else:
        key = idempotency_key or f"cli:{uuid.uuid4()}"
        adjustments = [Adjustment(tenant, closure_id, tokens, reason, key)]  # type: ignore[arg-type]
    with _ledger_database(dsn, "accountant-adjust") as connection:
        recorded = record_adjustments(connection, adjustments, by_whom or getpass.getuser())
    for item in recorded:
        click.echo(item.describe() + ("" if idempotency_key or csv_file else
                                      f" (idempotency key {item.adjustment.idempotency_key})"))


@main.group()
def period() -> None:
    """Billing periods (UTC months): close one once invoiced, list them."""


@period.command("close")
@click.argument("month", callback=_month, metavar="YYYY-MM")
@_BY_OPTION
@_DSN_OPTION
def period_close(month, by_whom: str | None, dsn: str | None) -> None:
    """Freeze MONTH: from now on its figures never change (late closures and adjustments go to the next open
    month)."""
    import getpass

    from app.ledger.periods import close_period

    with _ledger_database(dsn, "accountant-period") as connection:
        state, closed_now = close_period(connection, month, by_whom or getpass.getuser())
    click.echo(("closed " if closed_now else "already closed: ") + state.describe())


@period.command("list")
@_DSN_OPTION
def period_list(dsn: str | None) -> None:
    """Every month with closures or adjustments, open or closed, and its figures."""
    from app.ledger.periods import list_periods

    with _ledger_database(dsn, "accountant-period") as connection:
        states = list_periods(connection)
    click.echo("\n".join(state.describe() for state in states) if states else "(no periods yet)")


@main.command()
@click.option("--period", "month", required=True, callback=_month, help="The billing period (YYYY-MM).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: standard output); written whole or not at all.")
@_DSN_OPTION
def export(month, fmt: str, out: Path | None, dsn: str | None) -> None:
    """Write every tenant's usage by model in a period, and its adjustments, for an invoicing system."""
    from app.ledger.export import export_records, write_export
    from app.ledger.periods import period_state

    with _ledger_database(dsn, "accountant-export") as connection:
        state = period_state(connection, month)
        if state.closed_at is None:
            click.echo(f"warning: {month:%Y-%m} is open: its figures can still change (accountant period close "
                       f"{month:%Y-%m} freezes them)", err=True)
        if out is None:
            count = write_export(export_records(connection, month), sys.stdout, fmt)
        else:
            partial = out.with_name(out.name + ".partial")
            try:
                with open(partial, "w", newline="") as file:
                    count = write_export(export_records(connection, month), file, fmt)
            except BaseException:
                partial.unlink(missing_ok=True)  # no half export left where an invoicing system may look
                raise
            partial.replace(out)
    click.echo(f"exported {count:,} records of {month:%Y-%m}" + (f" to {out}" if out else ""), err=True)


main.add_command(simulate_command)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
