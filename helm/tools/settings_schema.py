"""Derive the ``config`` part of the chart's values.schema.json from the sidecar's settings model.

``config`` in the chart's values is written verbatim (merged with the keys the chart owns) to the
settings file that ``safety-monitor serve`` and ``safety-monitor model-server`` read. Its schema is
``monitor.service.settings.Settings.model_json_schema()`` minus the keys the chart sets itself (listener
ports, sidecar URL, outbox path, SAE, detector dir, Kafka/Redis connection, topic) and minus every
secret (tokens and passwords only ever come from Secrets), so a misspelt or chart-owned key fails
``helm install`` instead of the sidecar's start.

    python helm/tools/settings_schema.py            # rewrite helm/safety-monitor/values.schema.json
    python helm/tools/settings_schema.py --check    # exit 1 if it is out of date (tests do this too)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

CHART_DIR = Path(__file__).resolve().parents[1] / "safety-monitor"
SCHEMA_FILE = CHART_DIR / "values.schema.json"
DEF_PREFIX = "settings."

# Settings the chart owns, by dotted path (section -> fields; "*" = the whole section), with the value
# that sets each instead. Secrets are here too: they are only read from Secrets.
OWNED: dict[str, dict[str, str]] = {
    "server": {"host": "(0.0.0.0)", "port": "sidecar.port"},
    "model_server": {"host": "(0.0.0.0)", "port": "modelServer.port", "sidecar_url": "sidecar.port",
                     "encode_at_tap": "modelServer.encodeAtTap", "raw_share": "modelServer.rawShare"},
    "alerts": {"instance": "(the pod name)"},
    "alerts.outbox": {"path": "outbox.*"},
    "alerts.publisher": {"topic": "kafka.topic", "per_detector_topics": "kafka.perDetectorTopics"},
    "sae": {"*": "sae.*"},
    "auth": {"*": "auth.existingSecret"},
    "detectors": {"dir": "detectors.*"},
    "samples": {"enabled": "samples.enabled", "rate": "samples.rate", "max_rows": "samples.maxRows",
                "path": "(on the outbox volume)"},
    "kafka": {
        "bootstrap_servers": "kafka.bootstrapServers",
        "security_protocol": "kafka.securityProtocol",
        "sasl_mechanism": "kafka.sasl.mechanism",
        "sasl_plain_username": "kafka.sasl.username",
        "sasl_plain_password": "kafka.sasl.existingSecret",
        "ssl_cafile": "kafka.tls.*",
        "ssl_certfile": "kafka.tls.*",
        "ssl_keyfile": "kafka.tls.*",
        "ssl_password": "kafka.tls.keyPasswordKey",
    },
    "redis": {
        "url": "redis.url",
        "username": "redis.username",
        "password": "redis.auth.existingSecret",
        "ssl_ca_certs": "redis.tls.*",
        "ssl_certfile": "(not supported by the chart)",
        "ssl_keyfile": "(not supported by the chart)",
    },
}

_DROP_KEYS = {"title", "default", "format", "writeOnly", "examples"}


def _clean(node: Any) -> Any:
    """Draft-07 friendly copy: no titles/defaults/formats, refs into our definitions, no null branches."""
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "$ref":
            out[key] = "#/definitions/" + DEF_PREFIX + value.rsplit("/", 1)[-1]
        elif key == "description":
            out[key] = " ".join(value.replace("``", "`").split())
        else:
            out[key] = _clean(value)
    # `X | None`: Helm drops keys set to null, so only the non-null branch matters.
    branches = out.get("anyOf")
    if branches and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        out.pop("anyOf")
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
    return out


def _def_name(prop: dict[str, Any]) -> str:
    ref = prop.get("$ref") or next(b["$ref"] for b in prop["anyOf"] if "$ref" in b)
    return ref.rsplit("/", 1)[-1]


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(properties.config, definitions)`` for values.schema.json, from ``monitor.service.settings.Settings``."""
    sys.path.insert(0, str(CHART_DIR.parents[1]))
    from monitor.service.settings import Settings

    full = Settings.model_json_schema()
    defs = copy.deepcopy(full["$defs"])
    top = copy.deepcopy(full["properties"])
    # Resolve the dotted paths of OWNED to definition names, then drop the owned fields.
    for path, fields in OWNED.items():
        section, *sub = path.split(".")
        name = _def_name(top[section])
        for part in sub:
            name = _def_name(defs[name]["properties"][part])
        if "*" in fields:
            defs[name]["properties"] = {}
            continue
        for field in fields:
            if field not in defs[name]["properties"]:
                raise KeyError(f"{path}.{field} is no longer a setting: update OWNED in {__file__}")
            del defs[name]["properties"][field]
    config_props = {}
    for section, prop in top.items():
        name = _def_name(prop)
        if not defs[name]["properties"]:
            continue  # every field is chart-owned
        config_props[section] = {
            "$ref": prop.get("$ref") or f"#/$defs/{name}",
            "description": prop.get("description", ""),
        }
    used = set()

    def collect(name: str) -> None:
        if name in used:
            return
        used.add(name)
        for p in defs[name]["properties"].values():
            text = json.dumps(p)
            for other in defs:
                if f'"#/$defs/{other}"' in text:
                    collect(other)

    for p in config_props.values():
        collect(_def_name(p))
    definitions = {}
    for name in sorted(used):
        d = _clean(defs[name])
        d["additionalProperties"] = False
        definitions[DEF_PREFIX + name] = d
    config = {
        "type": "object",
        "additionalProperties": False,
        "description": "Settings of the sidecar and the example model server (monitor/service/settings.py), written to "
        "settings.yaml. Generated by helm/tools/settings_schema.py; the keys the chart owns and "
        "all secrets are left out.",
        "properties": _clean(config_props),
    }
    return config, definitions


def updated_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``config`` property and ``settings.*`` definitions regenerated."""
    config, definitions = config_schema()
    out = copy.deepcopy(schema)
    out["properties"]["config"] = config
    kept = {k: v for k, v in out.get("definitions", {}).items() if not k.startswith(DEF_PREFIX)}
    out["definitions"] = {**kept, **definitions}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if values.schema.json is out of date")
    args = parser.parse_args(argv)
    current = json.loads(SCHEMA_FILE.read_text())
    new = updated_schema(current)
    if args.check:
        if new != current:
            print(
                f"{SCHEMA_FILE} is out of date with monitor/service/settings.py: run python {__file__}",
                file=sys.stderr,
            )
            return 1
        return 0
    SCHEMA_FILE.write_text(json.dumps(new, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
