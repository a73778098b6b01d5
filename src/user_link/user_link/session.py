"""Open a zenoh session from a link configuration: the cloud router, or an edge client that dials out.

Both sides: TLS with mutual authentication (``transport/link/tls``), shared memory off (so bytes really go over
the link, also on one host), timestamping on (the zenoh-ext advanced publisher needs it), no multicast or
gossip scouting (endpoints are configured, nothing is discovered). The cloud router also enforces the access
control list of ``acl_rules``.
"""
from __future__ import annotations

import json
from typing import Any

from .certs import CLOUD_CN, edge_cn
from .config import LinkConfig
from .wire import pattern_to_key_expr

#: every message kind zenoh's ACL knows (zenoh 1.10)
ALL_MESSAGES = ("put", "delete", "declare_subscriber", "query", "declare_queryable", "reply", "liveliness_token",
                "declare_liveliness_subscriber", "liveliness_query")


def robot_key_exprs(cfg: LinkConfig, edge: str) -> list[str]:
    """Key expressions of edge ``edge``'s own robots: ``<ns>/<robot_id>/**`` each."""
    return [f"{cfg.key_prefix}{r}/**" for r in cfg.edges[edge].robots]


def acl_rules(cfg: LinkConfig) -> dict[str, Any]:
    """The router's ``access_control`` section: default deny; the cloud's certificate may do anything;
    the certificate of edge E (CN ``edge-E``) may

    - put, and subscribe to, keys under its own robots' prefixes ``<ns>/<robot_id>/**``, both ways;
    - put the ``up`` keys (router ingress), and serve them from its cache of latched samples: declare
      queryables and reply (ingress), receive the cloud's queries (egress); learn the cloud's subscribers of
      them (egress ``declare_subscriber``: without it a zenoh client filters its own puts after the first);
    - subscribe to the ``down`` keys and query them (ingress), receive their samples and replies, and learn
      the cloud's queryables of them (egress).
    - query ``<ns>/user/link/ping`` (the round trip ``userctl link status`` shows) and get the reply.
    Nothing else: no deletes or liveliness, no other robot's keys, no ``**`` subscription, no queries of ``up``
    keys (another edge's cache).
    """
    up = [pattern_to_key_expr(p, cfg.namespace) for p in cfg.up]
    down = [pattern_to_key_expr(p, cfg.namespace) for p in cfg.down]
    rules: list[dict[str, Any]] = [
        {"id": "cloud_all", "permission": "allow", "flows": ["ingress", "egress"], "messages": list(ALL_MESSAGES),
         "key_exprs": ["**"]}]
    subjects: list[dict[str, Any]] = [{"id": "cloud", "cert_common_names": [CLOUD_CN]}]
    policies: list[dict[str, Any]] = [{"id": "cloud", "subjects": ["cloud"], "rules": ["cloud_all"]}]
    ping = cfg.key_prefix + "user/link/ping"   # bridge.PING_KEY: the cloud link node answers round trips
    rules.append({"id": "ping_ask", "permission": "allow", "flows": ["ingress"], "messages": ["query"],
                  "key_exprs": [ping]})
    rules.append({"id": "ping_answer", "permission": "allow", "flows": ["egress"],
                  "messages": ["declare_queryable", "reply"], "key_exprs": [ping]})
    shared = ["ping_ask", "ping_answer"]
    if up:
        rules.append({"id": "up_put", "permission": "allow", "flows": ["ingress"],
                      "messages": ["put", "declare_queryable", "reply"], "key_exprs": up})
        rules.append({"id": "up_serve", "permission": "allow", "flows": ["egress"],
                      "messages": ["declare_subscriber", "query"], "key_exprs": up})
        shared += ["up_put", "up_serve"]
    if down:
        rules.append({"id": "down_subscribe", "permission": "allow", "flows": ["ingress"],
                      "messages": ["declare_subscriber", "query"], "key_exprs": down})
        rules.append({"id": "down_receive", "permission": "allow", "flows": ["egress"],
                      "messages": ["put", "reply", "declare_queryable"], "key_exprs": down})
        shared += ["down_subscribe", "down_receive"]
    for name in sorted(cfg.edges):
        own = robot_key_exprs(cfg, name)
        subjects.append({"id": f"edge_{name}", "cert_common_names": [edge_cn(name)]})
        edge_rules = list(shared)
        if own:
            rules.append({"id": f"robots_{name}", "permission": "allow", "flows": ["ingress", "egress"],
                          "messages": ["put", "declare_subscriber"], "key_exprs": own})
            edge_rules.append(f"robots_{name}")
        if edge_rules:
            policies.append({"id": f"edge_{name}", "subjects": [f"edge_{name}"], "rules": edge_rules})
    return {"enabled": True, "default_permission": "deny", "rules": rules, "subjects": subjects,
            "policies": policies}


def config_settings(cfg: LinkConfig) -> dict[str, Any]:
    """Every zenoh configuration key this link sets, as ``{path: value}`` (``Config.insert_json5`` each)."""
    tls: dict[str, Any] = {"root_ca_certificate": cfg.tls.ca, "enable_mtls": True}
    s: dict[str, Any] = {
        "scouting/multicast/enabled": False,
        "scouting/gossip/enabled": False,
        "transport/shared_memory/enabled": False,
        "timestamping/enabled": True,
        "transport/unicast/compression/enabled": cfg.compression,
        "transport/link/tx/lease": int(cfg.lease_s * 1000),
    }
    if cfg.role == "cloud":
        tls.update(listen_certificate=cfg.tls.cert, listen_private_key=cfg.tls.key)
        s.update({"mode": "router", "listen/endpoints": list(cfg.endpoints), "connect/endpoints": [],
                  "access_control": acl_rules(cfg)})
    else:
        tls.update(connect_certificate=cfg.tls.cert, connect_private_key=cfg.tls.key)
        s.update({"mode": "client", "connect/endpoints": list(cfg.endpoints), "listen/endpoints": [],
                  "connect/timeout_ms": int(cfg.connect_timeout_s * 1000)})
    s["transport/link/tls"] = tls
    return s


def zenoh_config(cfg: LinkConfig) -> Any:
    """A ``zenoh.Config`` of ``config_settings(cfg)``."""
    import zenoh

    zc = zenoh.Config()
    for path, value in config_settings(cfg).items():
        zc.insert_json5(path, json.dumps(value))
    return zc


class LinkError(RuntimeError):
    """The session could not be opened (no router answered, TLS refused, bad certificate...)."""


def open_session(cfg: LinkConfig) -> Any:
    """Open this side's zenoh session (a router for the cloud, a client for an edge); close it when done.

    Raises ConfigError for a missing TLS file and LinkError when zenoh refuses or no router answers
    within ``connect_timeout_s`` (zenoh reports a refused TLS handshake only as that timeout).
    """
    import zenoh

    cfg.check_files()
    zc = zenoh_config(cfg)
    try:
        return zenoh.open(zc)
    except zenoh.ZError as exc:
        what = (f"listen on {', '.join(cfg.endpoints)}" if cfg.role == "cloud"
                else f"reach a router at {', '.join(cfg.endpoints)} within {cfg.connect_timeout_s:g} s "
                     f"(down, unreachable, or it refused this certificate: check tls.* against the router's CA)")
        raise LinkError(f"{cfg.source}: {cfg.role} session could not {what}: {exc}") from None
