"""The learner side imports no robot code: every module of user_common, user_learner and user_buffer imports
with user_hal, MuJoCo, franky and pyrealsense2 made unimportable (a cloud learner host installs none of them)."""
import pathlib
import subprocess
import sys

SRC = pathlib.Path(__file__).resolve().parents[2]
LEARNER_SIDE = ("user_common", "user_learner", "user_buffer")
ROBOT_ONLY = ("user_hal", "user_testing", "mujoco", "franky", "pyrealsense2", "trossen_arm_sim", "hid", "pyspacemouse")


def modules(pkg: str) -> list[str]:
    root = SRC / pkg / pkg
    names = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_learner_side_packages_import_without_robot_code():
    mods = [m for pkg in LEARNER_SIDE for m in modules(pkg)]
    assert len(mods) > 20, mods
    code = ("import sys, importlib\n"
            f"for m in {ROBOT_ONLY!r}:\n    sys.modules[m] = None\n"
            "failed = []\n"
            f"for m in {mods!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ImportError as e:\n        failed.append(f'{m}: {e}')\n"
            "print('\\n'.join(failed) or 'ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout + r.stderr)[-3000:]
