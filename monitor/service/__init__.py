"""The sidecar service (``safety-monitor serve``): settings, assembly (``sidecar``), HTTP API (``app``,
``api_models``, ``ingest``, ``refusals``), the scoring worker (``scoring_pipeline``, ``request_table``,
``token_queue``), alert hand-off (``alert_emitter``) and Prometheus metrics (``prometheus``)."""
