"""Point the ROS 2 wheels' CMake exports at this venv's Python and numpy headers.

The wheels were built in a manylinux container whose interpreter lived in /opt/python/cp311-cp311;
their exported CMake files still name its include directories, which do not exist here. Rewriting
them is idempotent: a second run finds nothing to change.
"""
import pathlib
import sys
import sysconfig

import numpy

BUILD_PY = "/opt/python/cp311-cp311"
REPLACEMENTS = (
    (f"{BUILD_PY}/lib/python3.11/site-packages/numpy/_core/include", numpy.get_include()),
    (f"{BUILD_PY}/include/python3.11", sysconfig.get_paths()["include"]),
)


def main(venv: str) -> int:
    changed = 0
    for path in pathlib.Path(venv, "share").rglob("*.cmake"):
        text = path.read_text(errors="surrogateescape")
        if BUILD_PY not in text:
            continue
        new = text
        for old, repl in REPLACEMENTS:
            new = new.replace(old, repl)
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed += 1
    print(f"[setup] repaired {changed} CMake files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
