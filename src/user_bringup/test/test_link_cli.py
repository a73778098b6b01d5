"""``userctl link certs``: makes the link's certificates with openssl; bad input is one line and exit code 2."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from user_bringup import cli

OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not on PATH (apt-get install openssl)")
def test_link_certs_makes_a_ca_a_cloud_and_edges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert cli.main(["link", "certs", "--out", str(out), "--edge", "site1", "--edge", "site2",
                     "--host", "cloud.example.org"]) == 0
    printed = capsys.readouterr().out
    assert f"new CA: {out / 'ca.pem'}" in printed and "edge site2: " in printed and "(CN edge-site2)" in printed
    for name in ("cloud", "edge-site1", "edge-site2"):
        r = subprocess.run([OPENSSL, "verify", "-CAfile", str(out / "ca.pem"), str(out / f"{name}.pem")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    san = subprocess.run([OPENSSL, "x509", "-in", str(out / "cloud.pem"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost, IP Address:127.0.0.1, DNS:cloud.example.org" in san
    # a second run adds an edge under the same CA only with --force (the cloud files exist)
    assert cli.main(["link", "certs", "--out", str(out), "--edge", "site3"]) == 2
    assert "cloud.pem exists (use --force" in capsys.readouterr().err
    assert cli.main(["link", "certs", "--out", str(out), "--edge", "site3", "--force"]) == 0
    assert "reused CA" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--edge", "bad name"], "userctl link certs: error: edge name 'bad name'"),
    (["--host", "no such host!"], "userctl link certs: error: --host 'no such host!' is neither"),
    (["--days", "0"], "userctl link certs: error: --days must be in 1..36500, got 0"),
])
def test_link_certs_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list, words: str) -> None:
    assert cli.main(["link", "certs", "--out", str(tmp_path / "c"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(words) and err.count("\n") == 1, err
