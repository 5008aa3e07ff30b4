"""``safety-monitor alerts ...``: tail the alert topic, route it to webhooks, print the schema.

``monitor.cli`` calls :func:`register` with its subparsers; each command sets
``func`` (``args.func(args)`` returns the exit code). ``python -m alerts`` runs the
same commands without the rest of the CLI.

Kafka credentials come from ``SAFETY_MONITOR_KAFKA_*`` environment variables (see
:meth:`alerts.config.KafkaConnection.from_env`), never from flags, so they stay out of
process listings; Redis's password from ``SAFETY_MONITOR_REDIS_PASSWORD``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from alerts.config import (
    DEFAULT_DEAD_LETTER_TOPIC,
    DEFAULT_NAMESPACE,
    DEFAULT_TOPIC,
    KafkaConnection,
    WebhookRouterConfig,
)
from alerts.schema import Severity


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``alerts`` command group (``tail``, ``route``, ``schema``) to an argparse subparsers object."""
    alerts = subparsers.add_parser("alerts", help="subscribe to safety alerts, route them to webhooks")
    sub = alerts.add_subparsers(dest="alerts_command", required=True, metavar="{tail,route,schema}")

    tail = sub.add_parser("tail", help="print alerts from the Kafka topic as they arrive")
    _kafka_args(tail)
    tail.add_argument(
        "--group",
        default=None,
        help="consumer group (commits offsets); default: none, read all partitions without committing",
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest retained alert instead of new ones"
    )
    tail.add_argument(
        "--detector", action="append", default=None, metavar="NAME", help="only this detector (repeatable)"
    )
    tail.add_argument(
        "--min-severity",
        type=_severity,
        default=None,
        metavar="{low,medium,high,critical}",
        help="only alerts at least this severe",
    )
    tail.add_argument(
        "--model", action="append", default=None, metavar="ID", help="only this model (repeatable)"
    )
    tail.add_argument("--json", action="store_true", help="print each alert as one JSON line")
    tail.add_argument("--max-messages", type=int, default=None, metavar="N", help="exit after N alerts")
    tail.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this long without messages",
    )
    tail.add_argument(
        "--max-poll-interval-ms",
        type=int,
        default=300_000,
        help="consumer-group liveness bound (with --group); a few seconds suits the Tansu broker",
    )
    tail.set_defaults(func=run_tail)

    route = sub.add_parser("route", help="deliver alerts to the webhook subscriptions registered in Redis")
    _kafka_args(route)
    defaults = WebhookRouterConfig()
    route.add_argument("--group", default=defaults.group_id, help="consumer group shared by all routers")
    route.add_argument(
        "--redis-url",
        default="redis://localhost:6379/0",
        help="Redis holding the subscriptions (rediss:// for TLS)",
    )
    route.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="Redis key prefix of the subscriptions")
    route.add_argument("--dead-letter-topic", default=DEFAULT_DEAD_LETTER_TOPIC)
    route.add_argument(
        "--max-attempts", type=int, default=defaults.max_attempts, help="POST attempts per delivery"
    )
    route.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s, metavar="SECONDS")
    route.add_argument("--max-poll-interval-ms", type=int, default=defaults.max_poll_interval_ms)
    route.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this long without messages (default: run until stopped)",
    )
    route.set_defaults(func=run_route)

    schema = sub.add_parser(
        "schema", help="print the alert event's JSON Schema (for consumers in any language)"
    )
    schema.add_argument("output", nargs="?", default=None, help="write to this file instead of stdout")
    schema.set_defaults(func=run_schema)
    return alerts


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        default=None,
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: $SAFETY_MONITOR_KAFKA_BOOTSTRAP or localhost:9092)",
    )
    p.add_argument("--topic", default=DEFAULT_TOPIC, help=f"alert topic (default {DEFAULT_TOPIC})")
    p.add_argument(
        "--per-detector-topics", action="store_true", help="the sidecar publishes to <topic>.<detector>"
    )
    p.add_argument(
        "--security-protocol", default=None, choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    )
    p.add_argument("--sasl-mechanism", default=None, help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER")
    p.add_argument("--sasl-username", default=None, help="password: $SAFETY_MONITOR_KAFKA_SASL_PASSWORD")
    p.add_argument("--ssl-cafile", default=None)
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)


def _severity(value: str) -> Severity:
    try:
        return Severity.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connection(args: argparse.Namespace) -> KafkaConnection:
    return KafkaConnection.from_env(
        args.bootstrap,
        client_id="safety-monitor-cli",
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_plain_username=args.sasl_username,
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def run_tail(args: argparse.Namespace) -> int:
    from alerts.sinks import format_alert
    from alerts.subscriber import SubscriberStats, subscribe

    stats = SubscriberStats()
    stop = _stop_on_sigterm()
    alerts = subscribe(
        _connection(args),
        args.group,
        detectors=args.detector,
        min_severity=args.min_severity,
        models=args.model,
        topic=args.topic,
        per_detector_topics=args.per_detector_topics,
        start="earliest" if args.from_beginning else "latest",
        stats=stats,
        stop=stop,
        idle_timeout_s=args.idle_timeout,
        max_poll_interval_ms=args.max_poll_interval_ms,
    )
    shown = 0
    try:
        for alert in alerts:
            print(alert.to_json().decode() if args.json else format_alert(alert), flush=True)
            shown += 1
            if args.max_messages is not None and shown >= args.max_messages:
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    finally:
        alerts.close()
    print(
        f"alerts tail: {shown} shown, {stats.duplicates} duplicate(s), {stats.filtered} filtered, "
        f"{stats.malformed} malformed message(s) skipped",
        file=sys.stderr,
    )
    return 0


def run_route(args: argparse.Namespace) -> int:
    from alerts.config import RedisConnection
    from alerts.webhooks.registry import WebhookRegistry
    from alerts.webhooks.router import WebhookRouter

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = WebhookRouterConfig(
        topic=args.topic,
        group_id=args.group,
        dead_letter_topic=args.dead_letter_topic,
        max_attempts=args.max_attempts,
        request_timeout_s=args.request_timeout,
        max_poll_interval_ms=args.max_poll_interval_ms,
        namespace=args.namespace,
    )
    registry = WebhookRegistry(RedisConnection(url=args.redis_url).client(), namespace=args.namespace)
    router = WebhookRouter(_connection(args), registry, config)
    stop = _stop_on_sigterm()
    try:
        stats = router.run(stop=stop, idle_timeout_s=args.idle_timeout)
    except KeyboardInterrupt:
        stats = router.stats
    finally:
        router.close()
    print(
        f"alerts route: {stats.alerts} alert(s), {stats.delivered} delivered, {stats.dead_lettered} dead-lettered, "
        f"{stats.consumer.malformed} malformed message(s) skipped",
        file=sys.stderr,
    )
    return 0


def run_schema(args: argparse.Namespace) -> int:
    from alerts.schema import alert_json_schema, write_json_schema

    if args.output:
        write_json_schema(args.output)
    else:
        print(json.dumps(alert_json_schema(), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m alerts <tail|route|schema> ...``."""
    parser = argparse.ArgumentParser(prog="safety-monitor", description="safety-monitor alert tools")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["alerts", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)
