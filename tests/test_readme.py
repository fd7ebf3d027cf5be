"""The README's examples, run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastshm
from fastshm import Segment

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(marker) + r".*?\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block after {marker!r}"
    return match.group(1)


def test_pingpong_example(tmp_path: Path) -> None:
    script = tmp_path / "pingpong.py"
    script.write_text(_block("<!-- pingpong example"), encoding="utf-8")
    name = re.search(r'Segment\("([^"]+)"', script.read_text()).group(1)  # type: ignore[union-attr]
    pong = subprocess.Popen([sys.executable, str(script), "pong"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ping = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
        _, pong_err = pong.communicate(timeout=60)
        assert ping.returncode == 0, ping.stderr.decode()
        assert pong.returncode == 0, pong_err.decode()
        assert ping.stdout.decode().split("\n") == ["pong 0", "pong 1", "pong 2", ""]
        with pytest.raises(FileNotFoundError):  # the pinger deleted it
            Segment(name, create=False)
    finally:
        if pong.poll() is None:
            pong.kill()
            pong.wait(timeout=10)
        try:
            Segment(name, create=False).delete()
        except FileNotFoundError:
            pass


def test_queue_example(tmp_path: Path) -> None:
    from conftest import make_name

    name = make_name("readme")
    code = _block("<!-- queue example").replace('Queue("jobs"', f'Queue("{name}"')
    assert name in code
    script = tmp_path / "queue_example.py"
    script.write_text(code, encoding="utf-8")
    try:
        run = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr.decode()
        assert run.stdout.decode("utf-8").split("\n") == [
            "b'resize img_0001.png' [b'a', b'b', b'c'] wörld 0 True", "empty", "",
        ]
    finally:
        try:
            fastshm.Queue(name, create=False).delete()
        except FileNotFoundError:
            pass


def test_frames_example(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    from conftest import make_name

    name = make_name("readme")
    code = _block("<!-- frames example").replace('"frames"', f'"{name}"')
    assert code.count(name) == 3
    script = tmp_path / "frames.py"
    script.write_text(code, encoding="utf-8")
    try:
        camera = subprocess.run([sys.executable, str(script), "camera"], capture_output=True,
                                timeout=60)
        assert camera.returncode == 0, camera.stderr.decode()
        viewer = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
        assert viewer.returncode == 0, viewer.stderr.decode()
        assert viewer.stdout.decode().split("\n") == [
            "1 0 (1080, 1920, 3)", "2 1 (1080, 1920, 3)", "3 2 (1080, 1920, 3)", "",
        ]
        with pytest.raises(FileNotFoundError):  # the viewer deleted it
            fastshm.Subscriber(name)
    finally:
        try:
            fastshm.Publisher(name, create=False).delete()
        except FileNotFoundError:
            pass
