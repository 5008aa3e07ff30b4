"""A publishing sidecar stand-in for the crash and outage tests, run as a subprocess.

Emits ``--count`` alerts (alert ``i`` has ``token_span.start == i`` and request id
``req-{i % requests}``) through an AlertPipeline with a SQLite outbox and the Kafka
publisher, printing ``emitted <i>`` after each emit returned (the alert is durable then).
With ``--count 0`` it only delivers what an earlier run left pending. Then it waits for
the outbox to drain and prints ``drained pending=<n> published=<n> failed=<n> restarts=<n>``.
"""

from __future__ import annotations

import argparse
import sys
import time

from alerts.config import KafkaConnection, PublisherConfig
from alerts.delivery import AlertPipeline
from alerts.kafka_publisher import KafkaAlertPublisher
from alerts.outbox import AlertOutbox
from alerts.schema import Alert


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--outbox", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--rate", type=float, default=0.0, help="alerts per second; 0 = as fast as possible")
    p.add_argument("--batch", type=int, default=1, help="alerts per emit_many call (one transaction)")
    p.add_argument("--drain-timeout", type=float, default=60.0)
    args = p.parse_args()

    outbox = AlertOutbox(args.outbox)
    config = PublisherConfig(
        topic=args.topic,
        retry_initial_s=0.05,
        retry_max_s=0.5,
        delivery_timeout_ms=5000,
        request_timeout_ms=2000,
        max_block_ms=1000,
    )
    publisher = KafkaAlertPublisher(outbox, KafkaConnection(bootstrap_servers=args.bootstrap), config)
    pipeline = AlertPipeline(outbox=outbox, publisher=publisher).start()
    print("ready", flush=True)
    t0 = time.monotonic()
    for first in range(0, args.count, args.batch):
        if args.rate > 0:
            delay = t0 + first / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        batch = range(first, min(args.count, first + args.batch))
        pipeline.emit_many(
            [
                Alert(
                    model="smollm2-135m",
                    sae_sha256="5" * 64,
                    detector="scam",
                    detector_version="1.0.0",
                    score=3.0,
                    threshold=1.5,
                    severity="high",
                    request_id=f"req-{i % args.requests}",
                    token_span={"start": i, "end": i + 1},
                    instance="publisher-proc",
                )
                for i in batch
            ]
        )
        print(f"emitted {batch[-1]}", flush=True)
    drained = pipeline.flush(args.drain_timeout)
    stats = pipeline.stats()
    print(
        f"drained pending={stats.outbox.pending} published={stats.publisher.published_total} "
        f"failed={stats.publisher.failed_total} restarts={stats.publisher.producer_restarts_total}",
        flush=True,
    )
    pipeline.close(5)
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
