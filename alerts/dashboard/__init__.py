"""The dashboard: its records (``models``), the Redis store (``redis_store``) and the in-process one
(``memory_store``), the routes the sidecar mounts (``routes``) and the page (``page``)."""
