"""The pure parts of user_hal import without ROS, and production code does not import the test support."""
import pathlib
import re
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[1] / "user_hal"
PURE = ["user_hal.core.episode", "user_hal.core.cell", "user_hal.core.chunks", "user_hal.core.outbox",
        "user_hal.core.geometry", "user_hal.tasks.rules", "user_hal.tasks.experts", "user_hal.backends.sim.franka_sim",
        "user_hal.backends.sim.wxai_sim", "user_hal.devices.teleop"]


def test_pure_modules_import_with_rclpy_blocked():
    code = ("import sys\nfor m in ('rclpy', 'rclpy.node', 'user_msgs', 'user_msgs.msg'):\n    sys.modules[m] = None\n"
            + "".join(f"import {m}\n" for m in PURE) + "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_production_code_never_imports_the_test_support_package():
    imports = re.compile(r"^\s*(from|import)\s+user_testing\b", re.M)
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if imports.search(p.read_text())]
    assert offenders == [], f"user_hal modules import user_testing: {offenders}"
