"""``userctl bag info|replay|export|repair`` on a real bag: summaries, lossless export, errors, ROS replay,
repairs that every reader accepts."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bag_readers import assert_every_reader_sees_the_store
from buffer_helpers import transition_msg
from rclpy.serialization import serialize_message

from user_bringup.cli import main
from user_buffer import bag_tools
from user_buffer.codec import decode_transition
from user_buffer.store import TransitionStore

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "test"))
from ros_isolation import isolated_ros_env  # noqa: E402

CAMS = ("wrist", "side")
# robot, episode, steps, how it ends ("success", "fail" = terminated without success, None = not ended)
PLAN = [("franka_0", 1, 4, "success"), ("franka_0", 2, 6, "fail"), ("franka_0", 3, 2, None),
        ("ur5_0", 1, 5, "success"), ("ur5_0", 7, 3, None)]


def _write_bag(path: Path) -> None:
    s = TransitionStore(path)
    for robot, ep, n, end in PLAN:
        emb = "franka_fr3" if robot.startswith("franka") else "ur5e"
        for st in range(n):
            last = end is not None and st == n - 1
            m = transition_msg(robot, ep, st, cams=CAMS, size=12, last=last, embodiment=emb, reward=0.25 * (st + 1))
            m.success = last and end == "success"
            m.intervened = st == 1
            m.action_source = st % 3
            s.add(bytes(serialize_message(m)))
        s.sync()
    s.close()


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "demo"
    _write_bag(path)
    return path


def _state(d: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}


def _stored(bag: Path, robot: str, episode: int):
    """The episode's decoded transitions, in step order, straight from the store."""
    store = TransitionStore(bag, writable=False)
    ep = bag_tools.find_episode(store, episode, robot)
    ts = [decode_transition(store.read(int(r))) for r in ep.rows]
    store.close()
    return ts


def _read_png(path: Path) -> np.ndarray:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = plt.imread(path)                       # float32 in [0, 1] for 8-bit PNGs
    assert a.ndim == 3 and a.shape[2] == 3, a.shape
    return np.round(a * 255).astype(np.uint8)


# -- info -------------------------------------------------------------------------------------------------
def test_info_counts_and_read_only(bag, capsys):
    before = _state(bag)
    assert main(["bag", "info", str(bag)]) == 0
    out = capsys.readouterr().out
    assert "transitions: 20 in 5 episodes (3 ended)" in out
    assert "success: 2 of 5 episodes" in out
    lines = out.splitlines()
    assert any(line.split() == ["franka_0", "franka_fr3", "12", "3", "2", "1"] for line in lines), out
    assert any(line.split() == ["ur5_0", "ur5e", "8", "2", "1", "1"] for line in lines), out
    assert any(line.split() == ["ur5e", "1", "8", "2", "1", "1"] for line in lines), out
    # NAME SIZE MB MESSAGES KB/MESSAGE CHUNKS COMPLETE
    assert any(line.split()[:3] == ["demo_0.mcap", line.split()[1], "20"] and line.split()[4:] == ["zstd", "yes"]
               for line in lines), out
    assert "problems: none" in out
    assert "\nepisodes (" not in out

    assert main(["bag", "info", str(bag), "--episodes"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[out.splitlines().index("episodes (5):") + 2:][:5]]
    # ROBOT EPISODE STEPS ENDED RETURN SUCCESS FILE; return = 0.25 * (1 + ... + n)
    assert rows == [
        ["franka_0", "1", "4", "terminated", "2.500", "yes", "demo_0.mcap"],
        ["franka_0", "2", "6", "terminated", "5.250", "no", "demo_0.mcap"],
        ["franka_0", "3", "2", "no", "0.750", "no", "demo_0.mcap"],
        ["ur5_0", "1", "5", "terminated", "3.750", "yes", "demo_0.mcap"],
        ["ur5_0", "7", "3", "no", "1.500", "no", "demo_0.mcap"],
    ], out
    assert _state(bag) == before          # nothing written, nothing touched


def test_info_reports_damage_without_repairing(bag, tmp_path, capsys):
    copy = tmp_path / "copy" / "demo"
    shutil.copytree(bag, copy)
    (copy / "user_index.npz").unlink()
    mcap = copy / "demo_0.mcap"
    with open(mcap, "r+b") as f:               # a writer that crashed: no summary, no footer
        f.truncate(mcap.stat().st_size - 200)
    before = _state(copy)
    assert main(["bag", "info", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "problems (1):" in out and "demo_0.mcap: not closed by its writer" in out, out
    assert "demo_0.mcap" in out and " no (being written" in out
    assert _state(copy) == before


def test_repair_closes_a_cut_file_so_that_every_reader_reads_it(bag, tmp_path, capsys):
    copy = tmp_path / "cut" / "demo"
    shutil.copytree(bag, copy)
    mcap = copy / "demo_0.mcap"
    with open(mcap, "r+b") as f:               # a writer killed mid-chunk: no summary, no footer
        f.truncate(mcap.stat().st_size - 200)
    assert main(["bag", "repair", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"{mcap}: not closed by its writer" in out and f"{copy}: repaired; 20 transitions" in out, out
    assert main(["bag", "info", str(copy)]) == 0
    assert "problems: none" in capsys.readouterr().out
    assert len(assert_every_reader_sees_the_store(copy)) == 20
    assert main(["bag", "repair", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"{copy}: nothing to repair; 20 transitions"
    writer = TransitionStore(copy)             # a bag being written is left alone
    try:
        before = _state(copy)
        assert main(["bag", "repair", str(copy)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"userctl bag repair: error: {copy}: another process is writing this bag (stop it first)", err
        assert _state(copy) == before
    finally:
        writer.close()


def test_info_counts_a_step_stored_twice_once(bag, tmp_path, capsys):
    copy = tmp_path / "dup" / "demo"
    shutil.copytree(bag, copy)
    shutil.copy(copy / "demo_0.mcap", copy / "demo_1.mcap")     # every transition on disk twice
    (copy / "user_index.npz").unlink()
    assert main(["bag", "info", str(copy), "--episodes"]) == 0
    out = capsys.readouterr().out
    assert "transitions: 20 (+20 duplicate copies, ignored) in 5 episodes (3 ended)" in out, out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("  franka_0  ")][-3:] == ["4", "6", "2"]


def test_bad_input_exits_2_with_one_line(bag, tmp_path, capsys):
    assert main(["bag", "export", str(bag), "--episode", "99", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"userctl bag export: error: no episode 99 in bag {bag}; "
                   f"episodes: franka_0: 1-3; ur5_0: 1, 7"), err
    assert not (tmp_path / "x").exists()
    assert main(["bag", "replay", str(bag), "--episode", "7", "--robot", "franka_0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"userctl bag replay: error: no episode 7 for robot franka_0 in bag {bag}; episodes: franka_0: 1-3"
    assert main(["bag", "replay", str(bag), "--robot", "kuka"]) == 2
    err = capsys.readouterr().err
    assert "no robot 'kuka' in bag" in err and "robots: franka_0, ur5_0" in err, err
    assert main(["bag", "export", str(bag), "--episode", "1", "--out", str(tmp_path / "y")]) == 2
    assert "episode 1 exists for robots franka_0, ur5_0; choose one with --robot" in capsys.readouterr().err
    assert main(["bag", "info", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"userctl bag info: error: no bag directory {tmp_path / 'nope'}"
    assert main(["bag", "replay", str(bag), "--rate", "-1"]) == 2
    assert "--rate must be a positive number" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["bag", "export", str(bag), "--episode", "7", "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


# -- export -----------------------------------------------------------------------------------------------
def _check_pngs(out: Path, stored) -> None:
    for cam in CAMS:
        files = sorted((out / cam).iterdir())
        assert [f.name for f in files] == [f"{t.step:05d}.png" for t in stored]
        for f, t in zip(files, stored):
            np.testing.assert_array_equal(_read_png(f), t.obs.images[t.obs.camera_names.index(cam)])


def test_export_npz_is_lossless(bag, tmp_path, capsys):
    out = tmp_path / "npz"
    assert main(["bag", "export", str(bag), "--episode", "2", "--robot", "franka_0", "--out", str(out),
                 "--format", "npz"]) == 0
    assert "6 steps" in capsys.readouterr().out
    stored = _stored(bag, "franka_0", 2)
    with np.load(out / "episode.npz", allow_pickle=False) as z:
        for cam in CAMS:
            imgs = z[f"images_{cam}"]
            assert imgs.dtype == np.uint8 and imgs.shape == (6, 12, 12, 3)
            np.testing.assert_array_equal(imgs, np.stack([t.obs.images[t.obs.camera_names.index(cam)] for t in stored]))
        np.testing.assert_array_equal(z["proprio"], np.stack([t.obs.proprio for t in stored]))
        np.testing.assert_array_equal(z["next_proprio"], np.stack([t.next_obs.proprio for t in stored]))
        np.testing.assert_array_equal(z["action"], np.stack([t.action for t in stored]))
        assert z["proprio"].dtype == z["action"].dtype == np.float32
        np.testing.assert_array_equal(z["reward"], np.float32([t.reward for t in stored]))
        assert z["terminated"].tolist() == [False] * 5 + [True]
        assert z["success"].tolist() == [False] * 6 and z["truncated"].tolist() == [False] * 6
        assert z["intervened"].tolist() == [t.step == 1 for t in stored]
        assert z["policy_version"].tolist() == list(range(6))
    _check_pngs(out, stored)


def test_export_csv_is_lossless(bag, tmp_path, capsys):
    out = tmp_path / "csv"
    assert main(["bag", "export", str(bag), "--episode", "7", "--out", str(out)]) == 0
    stored = _stored(bag, "ur5_0", 7)
    with open(out / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == ["step"] + [f"action_{i}" for i in range(7)] + ["reward"]
    assert list(rows[0])[-1] == "proprio_19"
    assert len(rows) == 3
    for r, t in zip(rows, stored):
        assert int(r["step"]) == t.step
        assert np.float32([r[f"action_{i}"] for i in range(7)]).tolist() == t.action.tolist()
        assert np.float32([r[f"proprio_{i}"] for i in range(20)]).tobytes() == t.obs.proprio.tobytes()
        assert np.float32(r["reward"]) == np.float32(t.reward)
        assert (int(r["success"]), int(r["terminated"]), int(r["truncated"]), int(r["intervened"])) == \
            (t.success, t.terminated, t.truncated, t.intervened)
        assert (int(r["action_source"]), int(r["policy_version"])) == (t.action_source, t.policy_version)
    _check_pngs(out, stored)
    capsys.readouterr()


def test_png_writer_roundtrip_odd_sizes(tmp_path):
    rng = np.random.default_rng(3)
    for h, w in ((1, 1), (7, 13), (64, 3)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bag_tools.write_png(tmp_path / "a.png", img[:, ::-1])          # a strided view is fine too
        np.testing.assert_array_equal(_read_png(tmp_path / "a.png"), img[:, ::-1])


def test_replay_timing_helpers():
    assert bag_tools.delay_ns(10, 30, 0, 5) == 20            # stamps win
    assert bag_tools.delay_ns(0, 30, 100, 150) == 50         # unset stamp: log times
    assert bag_tools.delay_ns(40, 30, 200, 150, 7) == 7      # neither in order: the fallback
    assert bag_tools.normalize_prefix("replay/") == "/replay"
    assert bag_tools.normalize_prefix("/") == ""


def test_ctrl_c_during_a_replay_stops_it_between_messages_and_restores_the_handler(bag):
    """Ctrl-C sets a flag that the replay checks between messages (a KeyboardInterrupt raised inside
    rclpy's C calls would surface as an unrelated TypeError); the previous SIGINT handler comes back."""
    store = bag_tools.open_bag(bag)
    reads = 0
    real_read = store.read

    def read(row):
        nonlocal reads
        reads += 1
        if reads == 3:     # 1: the camera names; 2: step 0, published; 3: step 1, Ctrl-C while reading it
            os.kill(os.getpid(), signal.SIGINT)
        return real_read(row)

    store.read = read
    before = signal.getsignal(signal.SIGINT)
    lines: list[str] = []
    try:
        with isolated_ros_env():
            ep = bag_tools.find_episode(store, 2, "franka_0")
            sent = bag_tools.replay_episode(store, ep, rate=1000.0, loop=True, out=lines.append, wait_s=0.1)
    finally:
        store.close()
    assert sent["stopped"] and sent["observations"] == 1 and sent["loops"] == 1, (sent, lines)
    assert lines[-1] == "  stopped after 1 observations", lines
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_at_any_moment_of_a_replay_ends_it_cleanly(bag):
    """Ctrl-C during setup (node and publishers being created) or during the laps: always a clean stop."""
    store = bag_tools.open_bag(bag)
    outside: list[float] = []   # a signal that landed before replay_episode installed its own handler

    def early(signum, frame) -> None:   # record it, and press Ctrl-C again a moment later
        outside.append(delay)
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    previous = signal.signal(signal.SIGINT, early)
    try:
        with isolated_ros_env():
            ep = bag_tools.find_episode(store, 2, "franka_0")
            for delay in np.linspace(0.02, 0.6, 7):
                timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                timer.start()
                sent = bag_tools.replay_episode(store, ep, rate=1e6, loop=True, out=lambda line: None, wait_s=0.0)
                timer.join()
                assert sent["stopped"], (delay, sent)
    finally:
        signal.signal(signal.SIGINT, previous)
        store.close()
    assert len(outside) <= 2, f"Ctrl-C landed outside the replay at delays {outside}"


# -- replay as a real process ---------------------------------------------------------------------------------
def _userctl() -> list[str]:
    exe = shutil.which("userctl")
    return [exe] if exe else [sys.executable, "-m", "user_bringup.cli"]


def test_replay_process_publishes_every_step_in_order(bag, tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from user_msgs.msg import Observation

    stored = _stored(bag, "franka_0", 2)
    expect_steps = [t.step for t in stored] + [stored[-1].next_obs.step]
    expect_imgs = {c: [t.obs.images[t.obs.camera_names.index(c)] for t in stored]
                   + [stored[-1].next_obs.images[stored[-1].next_obs.camera_names.index(c)]] for c in CAMS}
    got: dict[str, list] = {"obs": [], "live": [], **{c: [] for c in CAMS}}
    arrived: list[float] = []

    def on_obs(msg) -> None:
        arrived.append(time.monotonic())
        got["obs"].append(msg)

    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    with isolated_ros_env() as env:
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = rclpy.create_node(f"test_bag_replay_{os.getpid()}", context=ctx)
        node.create_subscription(Observation, "/replay/franka_0/observation", on_obs, qos)
        node.create_subscription(Observation, "/franka_0/observation", got["live"].append, qos)
        for c in CAMS:
            node.create_subscription(Image, f"/replay/franka_0/camera/{c}/color/image_raw", got[c].append, qos)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        spin = threading.Thread(target=ex.spin, daemon=True)
        spin.start()
        procs: list[subprocess.Popen] = []

        def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as f:
                procs.append(subprocess.Popen([*_userctl(), "bag", "replay", str(bag), *args], env=env, stdout=f,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True))
            return procs[-1], log

        try:
            proc, log = start("replay", "--episode", "2", "--robot", "franka_0", "--rate", "20")
            rc = proc.wait(timeout=30)
            end = time.monotonic() + 3.0                      # let the last messages arrive
            while time.monotonic() < end and not (len(got["obs"]) >= 7 and all(len(got[c]) >= 7 for c in CAMS)):
                time.sleep(0.05)
            output = log.read_text()
            assert rc == 0, output
            assert "replaying franka_0 episode 2 (6 steps + final next_obs) at 20x" in output, output
            assert "done: 7 observations" in output, output
            assert [(o.robot_id, o.episode_id, o.step) for o in got["obs"]] == \
                [("franka_0", 2, s) for s in expect_steps], output
            for o, t in zip(got["obs"], stored):
                np.testing.assert_array_equal(np.float32(o.proprio), t.obs.proprio)
            for c in CAMS:
                assert len(got[c]) == len(expect_steps), (c, len(got[c]), output)
                for msg, want in zip(got[c], expect_imgs[c]):
                    assert (msg.encoding, msg.height, msg.width) == ("rgb8", 12, 12)
                    np.testing.assert_array_equal(
                        np.frombuffer(bytes(msg.data), np.uint8).reshape(12, msg.step)[:, :36].reshape(12, 12, 3), want)
            # 1 s between recorded stamps at 20x: 50 ms between observations
            assert 0.2 < arrived[-1] - arrived[0] < 2.0, np.diff(arrived)
            assert got["live"] == []

            # --loop runs until Ctrl-C, which ends it cleanly (exit 0).
            proc, log = start("loop", "--episode", "3", "--robot", "franka_0", "--rate", "50", "--loop")
            end = time.monotonic() + 20
            while "done (loop 2)" not in log.read_text() and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.05)
            assert "done (loop 2)" in log.read_text(), log.read_text()
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=10) == 0, log.read_text()
            assert "stopped after" in log.read_text()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            ex.shutdown(timeout_sec=1.0)
            node.destroy_node()
            ctx.try_shutdown()
            spin.join(timeout=2.0)
