# Source this file to use the USER workspace in a shell: `source scripts/env.sh`.
# Works with the wheel environment (.venv) and, if /opt/ros/jazzy is sourced first, a system install.
_USER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [ -f "$_USER_ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$_USER_ROOT/.venv/bin/activate"
  export AMENT_PREFIX_PATH="$_USER_ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
if [ -f "$_USER_ROOT/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  . "$_USER_ROOT/install/setup.bash"
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Fast DDS defaults for control loops (config/fastdds.xml: lost reliable samples repaired within 100 ms).
export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$_USER_ROOT/config/fastdds.xml}"
unset _USER_ROOT
# The userctl CLI (installed where `ros2 run user_bringup userctl` finds it) on PATH.
export PATH="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)/install/user_bringup/lib/user_bringup:$PATH"
