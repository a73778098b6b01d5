"""``make_link_certs``: a CA, the cloud's and the edges' certificates, checked with openssl itself."""
from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from user_link.certs import CertError, make_link_certs

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not on PATH (apt-get install openssl)")


def x509(cert: Path, *args: str) -> str:
    return subprocess.run([OPENSSL, "x509", "-in", str(cert), "-noout", *args], capture_output=True, text=True,
                          check=True).stdout


@needs_openssl
def test_ca_cloud_and_edges(tmp_path: Path) -> None:
    made = make_link_certs(tmp_path / "certs", ["site1", "site_2"], hosts=["cloud.example.org", "10.1.2.3"])
    assert not made.reused_ca
    names = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert names == ["ca.key", "ca.pem", "cloud.key", "cloud.pem", "edge-site1.key", "edge-site1.pem",
                     "edge-site_2.key", "edge-site_2.pem"]
    for cert, cn in [(made.cloud[0], "cloud"), (made.edges["site1"][0], "edge-site1"),
                     (made.edges["site_2"][0], "edge-site_2")]:
        r = subprocess.run([OPENSSL, "verify", "-CAfile", str(made.ca), str(cert)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr
        assert x509(cert, "-subject").strip() == f"subject=CN = {cn}"
    san = x509(made.cloud[0], "-ext", "subjectAltName")
    assert "DNS:localhost, IP Address:127.0.0.1, DNS:cloud.example.org, IP Address:10.1.2.3" in san
    assert "TLS Web Client Authentication" in x509(made.edges["site1"][0], "-ext", "extendedKeyUsage")
    assert "CA:TRUE" in x509(made.ca, "-ext", "basicConstraints")
    for key in (made.ca_key, made.cloud[1], *(k for _, k in made.edges.values())):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


@needs_openssl
def test_existing_ca_is_reused_and_files_are_not_overwritten(tmp_path: Path) -> None:
    first = make_link_certs(tmp_path, ["a"])
    ca_bytes = first.ca.read_bytes()
    with pytest.raises(CertError, match=r"cloud\.pem exists \(use --force"):
        make_link_certs(tmp_path, ["b"])
    again = make_link_certs(tmp_path, ["a", "b"], force=True)
    assert again.reused_ca and again.ca.read_bytes() == ca_bytes
    r = subprocess.run([OPENSSL, "verify", "-CAfile", str(again.ca), str(again.edges["b"][0])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    first.ca_key.unlink()
    with pytest.raises(CertError, match="holds only one of ca.pem and ca.key"):
        make_link_certs(tmp_path, ["a"], force=True)


@pytest.mark.parametrize("edges, hosts, words", [
    (["site 1"], [], "edge name 'site 1'"),
    (["-x"], [], "edge name '-x'"),
    (["a", "a"], [], "edge names repeat"),
    (["a"], ["bad host!"], "--host 'bad host!' is neither an IP address nor a DNS name"),
])
def test_bad_input_is_refused(tmp_path: Path, edges: list, hosts: list, words: str) -> None:
    with pytest.raises(CertError) as err:
        make_link_certs(tmp_path / "c", edges, hosts, openssl=OPENSSL or "openssl")
    assert words in str(err.value)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_missing_openssl_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"openssl not found \(/nonexistent/openssl is not an executable"):
        make_link_certs(tmp_path, ["a"], openssl="/nonexistent/openssl")
