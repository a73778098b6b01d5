"""A CA and the TLS certificates of a cloud router and N edges, made with the ``openssl`` command.

``userctl link certs --out DIR --edge site1 --edge site2 --host cloud.example.org`` writes into DIR::

    ca.pem  ca.key                    the link's own CA (reused when DIR already holds one)
    cloud.pem  cloud.key              CN "cloud"; SANs localhost, 127.0.0.1 and every --host
    edge-<name>.pem  edge-<name>.key  CN "edge-<name>" (what the router's ACL matches)

Keys are EC P-256 (PKCS#8 PEM, mode 0600); certificates are X.509 v3 signed by the CA.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

CLOUD_CN = "cloud"
EDGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_DNS_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                     r"[A-Za-z0-9])?)*$")


class CertError(ValueError):
    """Certificates could not be made from this input (bad names or hosts, files in the way)."""


class OpensslError(CertError):
    """The openssl command is missing or failed."""


def edge_cn(name: str) -> str:
    """The certificate common name of edge ``name``: ``edge-<name>``."""
    check_edge_name(name)
    return f"edge-{name}"


def check_edge_name(name: str) -> str:
    """``name`` if it is a valid edge name (letters, digits, '_' and '-', at most 63), else ValueError."""
    if not isinstance(name, str) or not EDGE_NAME_RE.match(name):
        raise ValueError(f"edge name {name!r}: use letters, digits, '_' and '-' (at most 63, not starting with "
                         f"'_' or '-')")
    return name


@dataclasses.dataclass(frozen=True)
class LinkCerts:
    """Paths of what ``make_link_certs`` wrote (or reused)."""

    ca: Path
    ca_key: Path
    cloud: tuple[Path, Path]
    edges: dict[str, tuple[Path, Path]]
    reused_ca: bool


def find_openssl(openssl: str | None = None) -> str:
    """The openssl executable to run; OpensslError when there is none."""
    exe = shutil.which(openssl or "openssl")
    if exe is None:
        raise OpensslError(f"openssl not found ({openssl or 'openssl'} is not an executable on PATH): install it "
                        f"(Debian/Ubuntu: apt-get install openssl)")
    return exe


def _san(hosts: Sequence[str]) -> str:
    entries = []
    for h in ["localhost", "127.0.0.1", *hosts]:
        try:
            entry = f"IP:{ipaddress.ip_address(h)}"
        except ValueError:
            if not _DNS_RE.match(h):
                raise CertError(f"--host {h!r} is neither an IP address nor a DNS name") from None
            entry = f"DNS:{h}"
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def _run(openssl: str, args: list[str], what: str) -> None:
    r = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise OpensslError(f"openssl failed making {what} (exit {r.returncode}): {tail}")


def _new_key(openssl: str, path: Path) -> None:
    _run(openssl, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
         f"the key {path.name}")
    os.chmod(path, 0o600)


def _leaf(openssl: str, ca: Path, ca_key: Path, cn: str, ext: str, out: Path, key: Path, days: int,
          tmp: Path) -> None:
    _new_key(openssl, key)
    csr, extfile = tmp / f"{cn}.csr", tmp / f"{cn}.ext"
    _run(openssl, ["req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr)], f"the request of {cn}")
    extfile.write_text(ext)
    _run(openssl, ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                   "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days), "-sha256",
                   "-extfile", str(extfile), "-out", str(out)], f"the certificate of {cn}")


def make_link_certs(out_dir: str | Path, edges: Sequence[str], hosts: Sequence[str] = (), days: int = 825,
                    force: bool = False, openssl: str | None = None) -> LinkCerts:
    """Write a CA (or reuse the one in ``out_dir``), the cloud's and each edge's certificate and key.

    Existing cloud or edge files are refused unless ``force``; a half-present CA (only one of ca.pem and
    ca.key) is refused always.
    """
    exe = find_openssl(openssl)
    for name in edges:
        try:
            check_edge_name(name)
        except ValueError as exc:
            raise CertError(str(exc)) from None
    if len(set(edges)) != len(edges):
        raise CertError(f"edge names repeat: {list(edges)}")
    if not 1 <= days <= 36500:
        raise CertError(f"--days must be in 1..36500, got {days}")
    san = _san(hosts)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CertError(f"{out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key = out / "ca.pem", out / "ca.key"
    leaves = {CLOUD_CN: (out / "cloud.pem", out / "cloud.key")}
    leaves.update({n: (out / f"edge-{n}.pem", out / f"edge-{n}.key") for n in edges})
    in_the_way = [str(p) for pair in leaves.values() for p in pair if p.exists()]
    if in_the_way and not force:
        raise CertError(f"{in_the_way[0]} exists (use --force to replace the cloud and edge files; the CA is kept)")
    if ca.exists() != ca_key.exists():
        raise CertError(f"{out} holds only one of ca.pem and ca.key: restore the other or remove both")
    reused = ca.exists()
    with tempfile.TemporaryDirectory(prefix="user_link_certs_") as tmpdir:
        tmp = Path(tmpdir)
        if not reused:
            _new_key(exe, ca_key)
            ca_ext = tmp / "ca.ext"
            ca_ext.write_text("[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                              "subjectKeyIdentifier=hash\n")
            _run(exe, ["req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=USER link CA", "-days",
                       str(max(days, 3650)), "-sha256", "-config", str(ca_ext), "-extensions", "v3_ca",
                       "-out", str(ca)], "the CA")
        leaf_ext = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
        cert, key = leaves.pop(CLOUD_CN)
        _leaf(exe, ca, ca_key, CLOUD_CN, leaf_ext + f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n",
              cert, key, days, tmp)
        for name, (cert_e, key_e) in leaves.items():
            _leaf(exe, ca, ca_key, edge_cn(name), leaf_ext + "extendedKeyUsage=clientAuth\n", cert_e, key_e, days, tmp)
    return LinkCerts(ca=ca, ca_key=ca_key, cloud=(out / "cloud.pem", out / "cloud.key"),
                     edges={n: (out / f"edge-{n}.pem", out / f"edge-{n}.key") for n in edges}, reused_ca=reused)


def summary(made: LinkCerts) -> str:
    """What ``make_link_certs`` wrote, one line per certificate (``userctl link certs`` prints it)."""
    lines = [f"{'reused' if made.reused_ca else 'new'} CA: {made.ca} (keep {made.ca_key} off the robots and the "
             f"cloud: it signs every link certificate)",
             f"cloud router: {made.cloud[0]} {made.cloud[1]} (CN {CLOUD_CN})"]
    lines += [f"edge {n}: {c} {k} (CN {edge_cn(n)})" for n, (c, k) in made.edges.items()]
    return "\n".join(lines)
