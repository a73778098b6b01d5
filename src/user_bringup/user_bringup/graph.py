"""The one description of a USER node graph, shared by ``ros2 launch`` and ``userctl launch``.

A graph is a YAML file in the config directory (e.g. ``config/franka_sac.yaml``)::

    description: free text
    args:                         # overridable on the command line as name:=value
      robots: {default: 1, help: "number of robots"}
      policy: {default: scripted, choices: [scripted], help: "..."}
    robots:                       # groups of robots; ids are <id_prefix><i>, or listed in ids
      - {kind: franka, id_prefix: franka_, count: "${robots}", vars: {profile: robot_sim}}
      - {kind: cam, ids: [cam_left], if: {policy: scripted}}   # a group with if: runs only when it matches
    nodes:
      - name: robot               # ROS node name
        package: user_hal         # omit to run `executable` as a plain command (path or on PATH)
        executable: robot_node
        namespace: "${robot_id}"  # default "/"
        per_robot: true           # one instance per robot
        for_robot: "${teleop_robot}"  # ...or one instance for the robot of this id (must exist)
        if: {policy: scripted}    # all listed args must match (a list value means any of)
        ends_run: true            # the run ends once every ends_run node has exited
        stops_run: true           # ...or as soon as this node exits cleanly (e.g. a learner's budget)
        respawn_delay: 5.0        # restart the node this many seconds after a crash (0: never)
        parameters: {robot_id: "${robot_id}", seed: "${seed}"}
        remappings: {from: to}    # or a list of [from, to] pairs
        arguments: []             # extra command-line arguments before --ros-args

An arg's default may name other args (``default: robot_${robot}``); it is expanded with their values.
Substitutions ``${name}`` use the args, ``config_dir`` (the graph file's folder) and, in per-robot
nodes, ``robot_id``, ``robot_index``, ``robot_kind`` and the robot group's ``vars`` (which override args
of the same name). A value that is exactly one ``${name}`` keeps that variable's type; ``$$`` writes a
literal ``$``. A robot group's ``if`` works as a node's. Given on the command line, a group's count
while its ``if`` switches it off, or an arg its ``vars`` override, is an error (it would be ignored).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GRAPH_SUFFIXES = (".yaml", ".yml")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SUBST_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
_TOP_KEYS = {"description", "args", "robots", "nodes"}
_ARG_KEYS = {"default", "help", "choices"}
_GROUP_KEYS = {"kind", "id_prefix", "count", "ids", "vars", "if"}
_NODE_KEYS = {
    "name", "package", "executable", "namespace", "parameters", "remappings", "arguments",
    "per_robot", "for_robot", "if", "ends_run", "stops_run", "respawn_delay",
}
_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


class GraphError(Exception):
    """A graph file or its overrides are invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ArgSpec:
    """One declared graph argument."""

    name: str
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None

    @property
    def type(self) -> type:
        """Return the Python type of the argument (that of its default)."""
        return type(self.default)


@dataclass(frozen=True)
class NodeSpec:
    """One process to launch, fully resolved."""

    package: str  # "" means `executable` is a plain command
    executable: str
    name: str
    namespace: str = "/"
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    ends_run: bool = False
    stops_run: bool = False  # a clean exit of this node ends the whole run
    arguments: list[str] = field(default_factory=list)
    robot_id: str | None = None
    respawn_delay: float = 0.0  # > 0: restart this long after a crash

    @property
    def fqn(self) -> str:
        """Return the fully-qualified node name, e.g. ``/franka_0/robot``."""
        return f"{self.namespace.rstrip('/')}/{self.name}"

    @property
    def label(self) -> str:
        """Return a short display name, e.g. ``franka_0/robot`` or ``registry``."""
        return self.fqn.lstrip("/")


@dataclass(frozen=True)
class Graph:
    """A resolved node graph."""

    path: Path
    config_dir: Path
    description: str
    arg_specs: dict[str, ArgSpec]
    args: dict[str, Any]
    robot_ids: list[str]
    nodes: list[NodeSpec]

    @property
    def ends_run_nodes(self) -> list[NodeSpec]:
        """Return the nodes whose exit ends the run."""
        return [n for n in self.nodes if n.ends_run]


def select_nodes(graph: Graph, only: list[str] | None = None, skip: list[str] | None = None) -> Graph:
    """Keep the nodes matching a pattern of ``only`` (all if empty), minus those matching ``skip``.

    Patterns are shell-style, matched against node labels (``user/learner``, ``franka_0/robot``,
    ``*/inference``). This splits one graph over hosts on one network: e.g. the robot PC runs
    ``skip=["user/learner", "*/inference"]`` and the GPU box ``only=["user/learner", "*/inference"]``.
    A pattern that matches no node, or a selection that leaves nothing, is a GraphError.
    """
    labels = [n.label for n in graph.nodes]
    for option, patterns in (("--only", only or []), ("--skip", skip or [])):
        for pat in patterns:
            if not fnmatch.filter(labels, pat):
                raise GraphError(f"{graph.path}: {option} {pat!r} matches no node (nodes: {', '.join(labels)})")
    kept = [n for n in graph.nodes
            if (not only or any(fnmatch.fnmatchcase(n.label, p) for p in only))
            and not any(fnmatch.fnmatchcase(n.label, p) for p in (skip or []))]
    if not kept:
        raise GraphError(f"{graph.path}: --only/--skip leave no node to run")
    return dataclasses.replace(graph, nodes=kept)


def default_config_dirs() -> list[Path]:
    """Return the folders searched for graph names: the installed share dir, then the source one."""
    dirs: list[Path] = []
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        try:
            dirs.append(Path(get_package_share_directory("user_bringup")) / "config")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    # Source checkout (symlink install, or running from the tree): src/user_bringup/config.
    dirs.append(Path(__file__).resolve().parent.parent / "config")
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in unique:
            unique.append(d)
    return unique


def find_graph(name_or_path: str | os.PathLike[str], config_dirs: list[Path] | None = None) -> Path:
    """Return the graph file for a path or a bare name such as ``franka_sac``."""
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    looks_like_path = os.sep in text or text.endswith(GRAPH_SUFFIXES)
    dirs = default_config_dirs() if config_dirs is None else list(config_dirs)
    if not looks_like_path:
        for d in dirs:
            for suffix in GRAPH_SUFFIXES:
                p = d / f"{text}{suffix}"
                if p.is_file():
                    return p.absolute()
    if looks_like_path:
        raise GraphError(f"{text}: graph file not found")
    known = sorted({p.stem for d in dirs for s in GRAPH_SUFFIXES for p in d.glob(f"*{s}") if _is_graph(p)})
    where = ", ".join(str(d) for d in dirs) or "(no config folder found)"
    raise GraphError(
        f"graph '{text}' not found in {where}" + (f" (files there: {', '.join(known)})" if known else "")
    )


def _is_graph(path: Path) -> bool:
    """Return True for a YAML file that looks like a graph (a mapping with ``nodes``)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and "nodes" in doc


def load_arg_specs(name_or_path: str | os.PathLike[str]) -> dict[str, ArgSpec]:
    """Return a graph's declared arguments without resolving anything else."""
    path = find_graph(name_or_path)
    return _parse_args(_read_yaml(path), path)


def load_graph(
    name_or_path: str | os.PathLike[str],
    overrides: dict[str, Any] | None = None,
    config_dirs: list[Path] | None = None,
) -> Graph:
    """Load, validate and resolve a graph; ``overrides`` maps arg names to values (strings ok)."""
    path = find_graph(name_or_path, config_dirs)
    doc = _read_yaml(path)
    specs = _parse_args(doc, path)
    args = _resolve_args(specs, overrides or {}, path)
    config_dir = path.parent
    base_vars: dict[str, Any] = dict(args)
    base_vars["config_dir"] = str(config_dir)
    robots = _parse_robots(doc.get("robots"), specs, args, overrides or {}, base_vars, path)
    nodes = _parse_nodes(doc.get("nodes"), specs, args, base_vars, robots, path)
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise GraphError(f"{path}: description: expected a string, got {_tname(description)}")
    return Graph(
        path=path,
        config_dir=config_dir,
        description=description,
        arg_specs=specs,
        args=args,
        robot_ids=[r.robot_id for r in robots],
        nodes=nodes,
    )


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Turn ``["robots:=3", "seed:=1"]`` into ``{"robots": "3", "seed": "1"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not _NAME_RE.match(name):
            raise GraphError(f"bad argument '{item}': expected name:=value")
        if name in out:
            raise GraphError(f"argument '{name}' given twice")
        out[name] = value
    return out


# --- parsing helpers -------------------------------------------------------------------------------


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GraphError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise GraphError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise GraphError(f"{path}: top level: expected a mapping, got {_tname(doc)}")
    unknown = sorted(set(map(str, doc)) - _TOP_KEYS)
    if unknown:
        raise GraphError(
            f"{path}: {unknown[0]}: unknown key (expected one of {', '.join(sorted(_TOP_KEYS))})"
        )
    if "nodes" not in doc:
        raise GraphError(f"{path}: nodes: missing key")
    return doc


def _coerce(value: Any, typ: type, what: str, path: Path) -> Any:
    """Convert a command-line string (or an already typed value) to ``typ``."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)):
            return str(value)
    raise GraphError(f"{path}: {what}: expected {typ.__name__}, got {value!r}")


def _parse_args(doc: dict[str, Any], path: Path) -> dict[str, ArgSpec]:
    raw = doc.get("args", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GraphError(f"{path}: args: expected a mapping of name -> spec, got {_tname(raw)}")
    specs: dict[str, ArgSpec] = {}
    for name, spec in raw.items():
        key = f"args.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise GraphError(f"{path}: {key}: argument names must be identifiers")
        if name in {"config_dir", "robot_id", "robot_index", "robot_kind"}:
            raise GraphError(f"{path}: {key}: name is reserved for a built-in substitution")
        if not isinstance(spec, dict):
            raise GraphError(f"{path}: {key}: expected a mapping with 'default', got {_tname(spec)}")
        unknown = sorted(set(map(str, spec)) - _ARG_KEYS)
        if unknown:
            raise GraphError(f"{path}: {key}.{unknown[0]}: unknown key")
        if "default" not in spec:
            raise GraphError(f"{path}: {key}.default: missing key")
        default = spec["default"]
        if not isinstance(default, (str, int, float, bool)):
            raise GraphError(
                f"{path}: {key}.default: expected a string, number or boolean, got {_tname(default)}"
            )
        help_text = spec.get("help", "")
        if not isinstance(help_text, str):
            raise GraphError(f"{path}: {key}.help: expected a string, got {_tname(help_text)}")
        choices = spec.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or not choices:
                raise GraphError(f"{path}: {key}.choices: expected a non-empty list")
            choices = tuple(
                _coerce(c, type(default), f"{key}.choices[{i}]", path) for i, c in enumerate(choices)
            )
            if default not in choices:
                raise GraphError(f"{path}: {key}.default: {default!r} is not one of the choices")
        specs[name] = ArgSpec(name=name, default=default, help=help_text, choices=choices)
    return specs


def _resolve_args(specs: dict[str, ArgSpec], overrides: dict[str, Any], path: Path) -> dict[str, Any]:
    for name in overrides:
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise GraphError(f"{path}: args.{name}: unknown argument (known: {known})")
    args: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in overrides:
            args[name] = spec.default
            continue
        value = _coerce(overrides[name], spec.type, f"args.{name} (command line {name}:=)", path)
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(str(c) for c in spec.choices)
            raise GraphError(f"{path}: args.{name}: {value!r} is not one of: {allowed}")
        args[name] = value
    # A default may name other args ("robot_${robot}"): it takes their values from this command line.
    plain = {n: v for n, v in args.items() if n in overrides or not (isinstance(v, str) and "${" in v)}
    for name in args.keys() - plain.keys():
        args[name] = _substitute(args[name], plain, f"args.{name}.default", path)
    return args


def _substitute(value: Any, variables: dict[str, Any], key: str, path: Path, hint: str = "") -> Any:
    """Expand ``${name}`` in strings, recursively in lists and dicts."""
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{key}.{k}", path, hint) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, f"{key}[{i}]", path, hint) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            known = ", ".join(sorted(variables))
            extra = hint if name.startswith("robot_") else ""
            raise GraphError(f"{path}: {key}: unknown substitution ${{{name}}}{extra} (known: {known})")
        return variables[name]

    whole = _SUBST_RE.fullmatch(value)
    if whole is not None and whole.group(0) != "$$":
        return lookup(whole.group(1))  # keeps the variable's type

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return str(lookup(match.group(1)))

    result = _SUBST_RE.sub(replace, value)
    if "${" in _SUBST_RE.sub("", value):
        raise GraphError(f"{path}: {key}: unterminated substitution in {value!r}")
    return result


@dataclass(frozen=True)
class _Robot:
    robot_id: str
    index: int
    kind: str
    vars: dict[str, Any]


def _parse_robots(raw: Any, specs: dict[str, ArgSpec], args: dict[str, Any], overrides: dict[str, Any],
                  base_vars: dict[str, Any], path: Path) -> list[_Robot]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise GraphError(f"{path}: robots: expected a list of robot groups, got {_tname(raw)}")
    robots: list[_Robot] = []
    seen: set[str] = set()
    for g, group in enumerate(raw):
        key = f"robots[{g}]"
        if not isinstance(group, dict):
            raise GraphError(f"{path}: {key}: expected a mapping, got {_tname(group)}")
        unknown = sorted(set(map(str, group)) - _GROUP_KEYS)
        if unknown:
            raise GraphError(f"{path}: {key}.{unknown[0]}: unknown key")
        if "if" in group:
            group = dict(group)
            condition = group.pop("if")
            if not _check_condition(condition, specs, args, f"{key}.if", path):
                count = _SUBST_RE.fullmatch(str(group.get("count", "")))
                if count and count.group(1) in overrides:
                    wanted = ", ".join(f"{n}:={v}" for n, v in condition.items())
                    raise GraphError(f"{path}: {key}.count: {count.group(1)}:={overrides[count.group(1)]} is "
                                     f"not used: this robot group runs only with {wanted}")
                continue
        group = _substitute(group, base_vars, key, path)
        kind = group.get("kind", "")
        if not isinstance(kind, str):
            raise GraphError(f"{path}: {key}.kind: expected a string, got {_tname(kind)}")
        extra = group.get("vars", {}) or {}
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise GraphError(f"{path}: {key}.vars: expected a mapping of name -> value")
        if "ids" in group:
            if "count" in group or "id_prefix" in group:
                raise GraphError(f"{path}: {key}.ids: give either ids or id_prefix + count")
            ids = group["ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise GraphError(f"{path}: {key}.ids: expected a list of strings")
        else:
            for needed in ("id_prefix", "count"):
                if needed not in group:
                    raise GraphError(f"{path}: {key}.{needed}: missing key (or give ids)")
            prefix = group["id_prefix"]
            if not isinstance(prefix, str):
                raise GraphError(f"{path}: {key}.id_prefix: expected a string, got {_tname(prefix)}")
            count = _coerce(group["count"], int, f"{key}.count", path)
            if count < 0:
                raise GraphError(f"{path}: {key}.count: must be >= 0, got {count}")
            ids = [f"{prefix}{i}" for i in range(count)]
        for name, value in extra.items():
            if ids and name in overrides:   # the group's value wins: a command-line value would be ignored
                raise GraphError(f"{path}: {key}.vars.{name}: {name}:={overrides[name]} does not apply to the "
                                 f"robots of this group (their {name} is {value!r})")
        for rid in ids:
            if not _NAME_RE.match(rid):
                raise GraphError(
                    f"{path}: {key}: robot id {rid!r} is not a valid ROS name token "
                    "(letters, digits, underscores; not starting with a digit)"
                )
            if rid in seen:
                raise GraphError(f"{path}: {key}: robot id {rid!r} is used twice")
            seen.add(rid)
            robots.append(_Robot(robot_id=rid, index=len(robots), kind=kind, vars=dict(extra)))
    return robots


def _check_condition(
    raw: Any, specs: dict[str, ArgSpec], args: dict[str, Any], key: str, path: Path
) -> bool:
    if not isinstance(raw, dict) or not raw:
        raise GraphError(f"{path}: {key}: expected a mapping of argument -> value")
    result = True
    for name, wanted in raw.items():
        if name not in specs:
            raise GraphError(f"{path}: {key}.{name}: unknown argument")
        spec = specs[name]
        options = wanted if isinstance(wanted, list) else [wanted]
        typed = [_coerce(o, spec.type, f"{key}.{name}", path) for o in options]
        if spec.choices is not None:
            for t in typed:
                if t not in spec.choices:
                    raise GraphError(f"{path}: {key}.{name}: {t!r} is not one of the arg's choices")
        result = result and args[name] in typed
    return result


def _normalize_namespace(ns: str, key: str, path: Path) -> str:
    parts = [p for p in ns.strip("/").split("/") if p]
    for p in parts:
        if not _NAME_RE.match(p):
            raise GraphError(f"{path}: {key}: invalid namespace {ns!r}")
    return "/" + "/".join(parts)


def _check_param_value(value: Any, key: str, path: Path) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise GraphError(f"{path}: {key}: parameter names must be non-empty strings")
            _check_param_value(v, f"{key}.{k}", path)
    elif isinstance(value, list):
        # ROS array parameters are typed: bool[], int64[], double[] or string[], never empty.
        kinds = {type(v) for v in value}
        if len(kinds) != 1 or not kinds <= {str, int, float, bool}:
            raise GraphError(
                f"{path}: {key}: a list parameter must be non-empty and hold values of one type "
                "(all strings, all integers, all floats or all booleans)"
            )
    elif not isinstance(value, (str, int, float, bool)):
        raise GraphError(f"{path}: {key}: unsupported parameter value {_tname(value)}")


def _parse_remappings(raw: Any, key: str, path: Path) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = []
        for i, item in enumerate(raw):
            if not (isinstance(item, list) and len(item) == 2):
                raise GraphError(f"{path}: {key}[{i}]: expected a [from, to] pair")
            pairs.append((item[0], item[1]))
    else:
        raise GraphError(f"{path}: {key}: expected a mapping or a list of [from, to] pairs")
    for a, b in pairs:
        if not (isinstance(a, str) and isinstance(b, str) and a and b):
            raise GraphError(f"{path}: {key}: remapping names must be non-empty strings")
    return [(a, b) for a, b in pairs]


def _parse_nodes(
    raw: Any,
    specs: dict[str, ArgSpec],
    args: dict[str, Any],
    base_vars: dict[str, Any],
    robots: list[_Robot],
    path: Path,
) -> list[NodeSpec]:
    if not isinstance(raw, list):
        raise GraphError(f"{path}: nodes: expected a list, got {_tname(raw)}")
    nodes: list[NodeSpec] = []
    for n, item in enumerate(raw):
        key = f"nodes[{n}]"
        if not isinstance(item, dict):
            raise GraphError(f"{path}: {key}: expected a mapping, got {_tname(item)}")
        if isinstance(item.get("name"), str):
            key = f"nodes[{n}]({item['name']})"
        unknown = sorted(set(map(str, item)) - _NODE_KEYS)
        if unknown:
            raise GraphError(f"{path}: {key}.{unknown[0]}: unknown key")
        for needed in ("name", "executable"):
            if needed not in item:
                raise GraphError(f"{path}: {key}.{needed}: missing key")
        for flag in ("per_robot", "ends_run", "stops_run"):
            if not isinstance(item.get(flag, False), bool):
                raise GraphError(f"{path}: {key}.{flag}: expected true or false")
        if "if" in item and not _check_condition(item["if"], specs, args, f"{key}.if", path):
            continue
        if item.get("per_robot", False) and "for_robot" in item:
            raise GraphError(f"{path}: {key}.for_robot: not with per_robot: true (one or the other)")
        if item.get("per_robot", False) or "for_robot" in item:
            chosen = robots
            if "for_robot" in item:
                rid = _substitute(item["for_robot"], base_vars, f"{key}.for_robot", path)
                chosen = [r for r in robots if r.robot_id == rid]
                if not chosen:
                    known = ", ".join(r.robot_id for r in robots) or "none"
                    raise GraphError(f"{path}: {key}.for_robot: {rid!r} is not a robot of this graph "
                                     f"(robots: {known})")
            instances: list[tuple[dict[str, Any], str | None]] = []
            for r in chosen:
                v = dict(base_vars)
                v.update(r.vars)
                v.update(robot_id=r.robot_id, robot_index=r.index, robot_kind=r.kind)
                instances.append((v, r.robot_id))
            hint = ""
        else:
            instances = [(base_vars, None)]
            hint = " (robot_* substitutions need per_robot: true or for_robot)"
        for variables, robot_id in instances:
            nodes.append(_build_node(item, variables, robot_id, key, path, hint))
    seen: dict[str, str] = {}
    for node in nodes:
        if node.fqn in seen:
            raise GraphError(
                f"{path}: nodes: two nodes resolve to the same name {node.fqn} "
                "(give them distinct names or namespaces, e.g. ${robot_id} for per_robot nodes)"
            )
        seen[node.fqn] = node.label
    return nodes


def _build_node(
    item: dict[str, Any],
    variables: dict[str, Any],
    robot_id: str | None,
    key: str,
    path: Path,
    hint: str,
) -> NodeSpec:
    def text(field_name: str, default: str | None = None) -> str:
        raw = item.get(field_name, default)
        value = _substitute(raw, variables, f"{key}.{field_name}", path, hint)
        if not isinstance(value, str):
            raise GraphError(f"{path}: {key}.{field_name}: expected a string, got {_tname(value)}")
        return value

    name = text("name")
    if not _NAME_RE.match(name):
        raise GraphError(f"{path}: {key}.name: invalid ROS node name {name!r}")
    package = text("package", "")
    executable = text("executable")
    if not executable:
        raise GraphError(f"{path}: {key}.executable: must not be empty")
    namespace = _normalize_namespace(text("namespace", "/"), f"{key}.namespace", path)
    params = item.get("parameters", {}) or {}
    if not isinstance(params, dict):
        raise GraphError(f"{path}: {key}.parameters: expected a mapping, got {_tname(params)}")
    params = _substitute(params, variables, f"{key}.parameters", path, hint)
    _check_param_value(params, f"{key}.parameters", path)
    remaps = _substitute(item.get("remappings"), variables, f"{key}.remappings", path, hint)
    arguments = _substitute(item.get("arguments", []) or [], variables, f"{key}.arguments", path, hint)
    if not isinstance(arguments, list) or not all(isinstance(a, (str, int, float)) for a in arguments):
        raise GraphError(f"{path}: {key}.arguments: expected a list of strings")
    delay = _substitute(item.get("respawn_delay", 0.0), variables, f"{key}.respawn_delay", path, hint)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise GraphError(f"{path}: {key}.respawn_delay: expected seconds >= 0, got {delay!r}")
    return NodeSpec(
        package=package,
        executable=executable,
        name=name,
        namespace=namespace,
        parameters=params,
        remappings=_parse_remappings(remaps, f"{key}.remappings", path),
        ends_run=bool(item.get("ends_run", False)),
        stops_run=bool(item.get("stops_run", False)),
        arguments=[str(a) for a in arguments],
        robot_id=robot_id,
        respawn_delay=float(delay),
    )
