"""The Redis dashboard store against a real redis-server: keys, TTLs, reads, never blocking, staleness."""

from __future__ import annotations

import time

import pytest
from alerts_testkit import make_alert, wait_until
from redis.crc import key_slot

from alerts.config import RedisConnection, StoreConfig
from alerts.dashboard.models import CalibrationSummary, DetectorThreshold
from alerts.dashboard.redis_store import DashboardStore

pytestmark = pytest.mark.redis

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _store(server, **overrides) -> DashboardStore:
    config = StoreConfig(
        model=MODEL,
        instance="sidecar-a",
        heartbeat_interval_s=0.2,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        stale_after_s=1.0,
        **overrides,
    )
    return DashboardStore(
        config, RedisConnection(url=server.url, socket_timeout_s=0.5, socket_connect_timeout_s=0.5)
    )


def test_keys_share_one_hash_tag_and_expire(redis_server):
    store = _store(redis_server, stream_maxlen=50, counter_ttl_s=3600, state_ttl_s=7200, heartbeat_ttl_s=30)
    with store:
        for i in range(300):
            store.record_alert(make_alert(i, detector=("scam", "deception")[i % 2]))
        store.observe_scores("scam", [0.5, 1.2, 9.0], threshold=1.5)
        store.set_thresholds([DetectorThreshold(detector="scam", threshold=1.5)])
        store.heartbeat()
        assert store.flush(10)
    r = redis_server.client()
    keys = [k.decode() for k in r.keys("*")]
    assert keys and all(k.startswith("safety-monitor:{HuggingFaceTB/SmolLM2-135M-Instruct}:") for k in keys)
    # One Redis Cluster slot for the whole model (the slot is computed from the {hash tag} only).
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(b"safety-monitor:{other-model}:alerts") != key_slot(store.keys.stream.encode())
    ttls = {k: r.ttl(k) for k in keys}
    assert all(t > 0 for t in ttls.values()), f"keys without TTL: {[k for k, t in ttls.items() if t <= 0]}"
    assert max(t for k, t in ttls.items() if ":rate:" in k or ":hist:" in k) <= 3600
    assert max(t for k, t in ttls.items() if k.endswith(":hb:sidecar-a")) <= 30
    # XADD MAXLEN ~ 50: trimmed to about 50 (whole macro nodes), far below 300.
    assert 50 <= r.xlen(store.keys.stream) < 300


def test_summary_reads_back_what_was_written(redis_server):
    store = _store(redis_server)
    alerts = [make_alert(i, detector="scam", severity=("low", "high")[i % 2]) for i in range(6)]
    alerts.append(make_alert(9, detector="power-seeking", severity="critical"))
    with store:
        for a in alerts:
            store.record_alert(a)
        store.observe_scores("scam", [0.1, 0.2, 1.0, 1.6, 10.0], threshold=2.0)
        store.set_thresholds(
            [
                DetectorThreshold(
                    detector="scam",
                    version="1.0.0",
                    threshold=2.0,
                    concept="scam e-mails",
                    calibration=CalibrationSummary(
                        target_fpr=0.01,
                        achieved_fpr=0.012,
                        fpr_ci_low=0.008,
                        fpr_ci_high=0.017,
                        datasets=["benign@ab12"],
                    ),
                ),
                DetectorThreshold(detector="sycophancy", threshold=0.0, status="no_signal"),
            ]
        )
        assert store.flush(10)
        wait_until(lambda: store.instances(), 5, what="heartbeat")
        summary = store.summary(minutes=10, recent=5)
    assert summary.stale is False
    assert [a.event_id for a in summary.recent] == [a.event_id for a in reversed(alerts)][:5]
    series = {s.detector: s for s in summary.rates.series}
    assert sum(series["scam"].total) == 6 and sum(series["scam"].by_severity["high"]) == 3
    assert sum(series["power-seeking"].by_severity["critical"]) == 1
    assert "sycophancy" in series and sum(series["sycophancy"].total) == 0
    assert len(summary.rates.minutes) == 10 and summary.rates.minutes[-1] == int(time.time()) // 60 * 60
    assert {t.detector: t.status for t in summary.thresholds} == {"scam": "ok", "sycophancy": "no_signal"}
    assert summary.thresholds[0].calibration.datasets == ["benign@ab12"]
    hist = {h.detector: h for h in summary.histograms}["scam"]
    # score/threshold: 0.05, 0.1 -> [0, .25); 0.5 -> [.5, .75); 0.8 -> [.75, .9); 5.0 -> [5, inf)
    assert dict(zip(hist.edges, hist.counts, strict=True)) == {
        0.0: 2,
        0.25: 0,
        0.5: 1,
        0.75: 1,
        0.9: 0,
        1.0: 0,
        1.1: 0,
        1.25: 0,
        1.5: 0,
        2.0: 0,
        3.0: 0,
        5.0: 1,
    }
    assert summary.instances[0].instance == "sidecar-a" and summary.instances[0].age_s < 5


def test_writes_never_block_and_store_goes_stale_then_recovers(redis_server, record_figures):
    store = _store(redis_server, queue_size=200)
    store.set_health_provider(lambda: {"outbox_pending": 7})
    with store:
        store.set_thresholds([DetectorThreshold(detector="scam", threshold=1.5)])
        store.record_alert(make_alert(0))
        assert store.flush(10)
        assert not store.is_stale

        redis_server.kill()
        wait_until(lambda: store.is_stale, 5, what="store reports stale")
        times = []
        for i in range(1, 301):
            t0 = time.perf_counter()
            store.record_alert(make_alert(i))
            times.append(time.perf_counter() - t0)
        health = store.store_health()
        assert health.stale and "unreachable" in health.stale_reason
        assert health.dropped_total > 0  # the queue (200) overflowed and counted it
        # A write that waited on Redis would wait out a retry (0.05-0.2 s here) on every call; the bound
        # leaves room for a scheduling hiccup of a loaded machine on one call (54 ms was seen), not more.
        assert sorted(times)[len(times) // 2] < 0.005 and sorted(times)[-3] < 0.05, \
            f"writes blocked: median {sorted(times)[len(times) // 2] * 1000:.2f} ms, 3rd slowest {sorted(times)[-3] * 1000:.1f} ms"
        assert max(times) < 0.15, f"a write blocked for {max(times) * 1000:.1f} ms"
        summary = store.summary()
        assert summary.stale is True
        assert [a.detector for a in summary.recent] == []  # no cache yet in this process: empty, but stale

        redis_server.start()  # same port, empty: no persistence
        t_restart = time.monotonic()
        wait_until(lambda: not store.is_stale and store.flush(0.01), 15, what="writes resumed")
        recovery_s = time.monotonic() - t_restart
        store.record_alert(make_alert(999))
        assert store.flush(5)
        summary = store.summary()
    assert summary.stale is False
    assert summary.recent[0].event_id  # queued alerts were written after the outage
    assert len(summary.recent) == 50
    assert [t.detector for t in summary.thresholds] == ["scam"]  # re-sent after Redis came back empty
    assert summary.instances and summary.instances[0].details["outbox_pending"] == 7
    record_figures(
        writes_during_outage=300,
        max_write_call_ms=max(times) * 1000,
        dropped_by_full_queue=health.dropped_total,
        recovery_s=recovery_s,
    )


def test_summary_serves_last_good_data_marked_stale(redis_server):
    store = _store(redis_server)
    with store:
        store.record_alert(make_alert(1))
        assert store.flush(5)
        fresh = store.summary()
        redis_server.kill()
        stale = store.summary()
    assert fresh.stale is False and stale.stale is True
    assert [a.event_id for a in stale.recent] == [a.event_id for a in fresh.recent]
    assert stale.data_as_of == fresh.data_as_of
    assert stale.generated_at > fresh.generated_at


def test_auth_password_is_used(tmp_path):
    from alerts_testkit import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        server.client().config_set("requirepass", "hunter2")
        denied = DashboardStore(
            StoreConfig(model="m", retry_initial_s=0.05), RedisConnection(url=server.url)
        ).start()
        allowed = DashboardStore(
            StoreConfig(model="m", retry_initial_s=0.05), RedisConnection(url=server.url, password="hunter2")
        ).start()
        allowed.record_alert(make_alert())
        denied.record_alert(make_alert())
        assert allowed.flush(5)
        wait_until(lambda: denied.is_stale, 5, what="unauthenticated store goes stale")
        assert "Authentication" in denied.stale_reason or "NOAUTH" in denied.stale_reason
        denied.close(0.2)
        allowed.close()
    finally:
        server.kill()


def _make_certs(d) -> None:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=safety-monitor-test-ca")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.crt",
        "-days", "2", "-extfile", "ext.cnf")  # fmt: skip


def test_tls_and_auth(tmp_path):
    """rediss:// with a private CA and a password: the configured store writes; one without the CA cannot."""
    import subprocess

    from alerts_testkit import free_port, wait_port

    _make_certs(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--requirepass", "s3cret-pw", "--save", "", "--appendonly", "no"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        url = f"rediss://127.0.0.1:{port}/0"
        good = DashboardStore(
            StoreConfig(model="m", retry_initial_s=0.05),
            RedisConnection(url=url, password="s3cret-pw", ssl_ca_certs=str(tmp_path / "ca.crt")),
        )
        untrusted = DashboardStore(StoreConfig(model="m", retry_initial_s=0.05),
                                   RedisConnection(url=url, password="s3cret-pw"))  # fmt: skip
        with good, untrusted:
            good.record_alert(make_alert(1))
            untrusted.record_alert(make_alert(2))
            assert good.flush(5)
            wait_until(lambda: untrusted.is_stale, 5, what="store without the CA goes stale")
            assert "certificate" in untrusted.stale_reason.lower()
            assert [a.request_id for a in good.recent_alerts()] == ["req-1"]
            assert not good.is_stale
    finally:
        proc.kill()
        proc.wait(5)
