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


def test_link_status_without_a_link_node_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "test"))
    from ros_isolation import isolated_ros_env

    with isolated_ros_env():
        assert cli.main(["link", "status", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "userctl link status: no link node answered on /user/link/status within 0.5 s" in err
    assert "ros2 run user_link link_node" in err


def test_link_status_text_has_rates_round_trip_and_queue() -> None:
    from user_link.bridge import format_status

    prev = {"role": "edge", "endpoints": ["tls/cloud:7447"], "connected": True, "sent_msgs": 10, "sent_bytes": 1000,
            "received_msgs": 2, "received_bytes": 100, "rtt_ms": 41.5, "queued_transitions": 3,
            "robots": ["franka_0"], "routes_out": ["/user/transitions"], "last_error": "", "time": 100.0}
    cur = dict(prev, sent_msgs=20, sent_bytes=5000, received_bytes=300, time=102.0)
    text = format_status(cur, prev)
    assert text.splitlines()[0] == "link edge (tls/cloud:7447): connected, round trip 41.5 ms"
    assert "2.0 kB/s  (total 20 messages, 5.0 kB)" in text and "100 B/s  (total 2 messages, 300 B)" in text
    assert "queued transitions 3 (robots franka_0)" in text and "last error: -" in text
    down = format_status(dict(cur, connected=False, rtt_ms=None, last_error="link: x"))
    assert "NOT CONNECTED (reconnecting), round trip: no answer" in down and "-/s" in down
    assert "last error: link: x" in down
