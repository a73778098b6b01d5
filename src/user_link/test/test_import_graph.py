"""user_link runs on a cloud host too: every module imports with robot code (user_hal, MuJoCo, franky, ...) and the
learner (user_learner, torch) made unimportable."""
import pathlib
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[1] / "user_link"
FORBIDDEN = ("user_hal", "user_testing", "user_learner", "user_buffer", "torch", "mujoco", "franky", "pyrealsense2")


def test_user_link_imports_without_robot_or_learner_code() -> None:
    mods = sorted("user_link" if p.stem == "__init__" else f"user_link.{p.stem}" for p in PKG.glob("*.py"))
    assert {"user_link.wire", "user_link.config", "user_link.certs", "user_link.session"} <= set(mods)
    code = ("import sys, importlib\n"
            f"for m in {FORBIDDEN!r}:\n    sys.modules[m] = None\n"
            f"for m in {mods!r}:\n    importlib.import_module(m)\n"
            f"print(sorted(m for m in {FORBIDDEN!r} if sys.modules.get(m) is not None) or 'ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout + r.stderr)[-3000:]
