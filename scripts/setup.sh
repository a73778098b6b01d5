#!/usr/bin/env bash
# Set up (or refresh) the USER workspace: system libraries, .venv with pinned wheels, CMake repairs
# for the ROS wheels, a colcon build, and the Node.js modules of the tests' MCAP reader. Every step is
# skipped when its inputs did not change, so a second run with nothing changed takes a few seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${USER_PYTHON:-python3.11}"
say() { printf '[setup] %s\n' "$*"; }

# 1. System libraries: EGL/Mesa for headless MuJoCo rendering; libusb and hidapi for RealSense and SpaceMouse.
APT_PKGS=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libusb-1.0-0 libhidapi-hidraw0)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Node.js runs Foxglove's MCAP reader in the tests (step 5); Debian's packages only where none is installed.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Virtual environment with pinned Python dependencies.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PY" >/dev/null || PY=python3
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
req_hash="$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]; then
  say "installing requirements.txt and requirements-nodeps.txt (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  # Wheels used only for the files they ship, without their declared dependencies (see the file).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/python" -c "import rclpy, mujoco, torch, yaml, importlib.util as u; assert u.find_spec('trossen_arm_sim')" \
    || { echo "[setup] ERROR: Python dependencies failed to install (see above)" >&2; exit 1; }
  rm -f "$VENV/.cmake-repaired"
  echo "$req_hash" > "$VENV/.requirements.sha256"
fi

# 3. The ROS wheels' CMake exports name the wheel build container's Python; point them at ours.
if [ ! -f "$VENV/.cmake-repaired" ]; then
  say "repairing CMake paths in the ROS wheels"
  "$VENV/bin/python" "$ROOT/scripts/repair_wheel_cmake.py" "$VENV"
  touch "$VENV/.cmake-repaired"
fi

# 4. colcon build of src/ (symlink install: Python edits need no rebuild).
src_hash="$(find src launch config colcon.meta -type f -not -path '*/__pycache__/*' -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$ROOT/install/.src.sha256" 2>/dev/null)" != "$src_hash" ]; then
  say "colcon build"
  mkdir -p build
  (
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    colcon --log-base build/log build --symlink-install --metas colcon.meta \
      --event-handlers console_direct- console_cohesion- status- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >build/colcon.log 2>&1 \
      || { tail -60 build/colcon.log >&2; echo "[setup] ERROR: colcon build failed (full log: build/colcon.log)" >&2; exit 1; }
  )
  echo "$src_hash" > "$ROOT/install/.src.sha256"
fi
# 5. The tests' independent MCAP reader: Foxglove's @mcap/core under Node.js, pinned by test/js/package-lock.json.
lock_hash="$(sha256sum test/js/package-lock.json | cut -d' ' -f1)"
if [ "$(cat test/js/node_modules/.lock.sha256 2>/dev/null)" != "$lock_hash" ]; then
  say "installing the tests' Node.js MCAP reader (npm ci in test/js)"
  if (cd test/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    echo "$lock_hash" > test/js/node_modules/.lock.sha256
  else
    say "WARNING: npm ci failed; tests that read bags with Foxglove's reader will skip (and say why)"
  fi
fi
say "ready: source scripts/env.sh to use the workspace"
