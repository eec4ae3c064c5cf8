"""The play page: keys -> actions, the session (dream + real game), the server, a real browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodels.cli import main
from worldmodels.controller.model import controller_actions, doom_direction
from worldmodels.play.server import handle_message
from worldmodels.play.session import PlaySession, keys_to_action, load_play_models

# ------------------------------------------------------------------ keys -> actions


def test_arrow_keys_mean_what_the_page_says_on_carracing():
    assert keys_to_action("carracing", ["ArrowLeft"]).tolist() == [-1.0, 0.0, 0.0]
    assert keys_to_action("carracing", ["ArrowRight", "ArrowUp"]).tolist() == [1.0, 1.0, 0.0]
    steer, gas, brake = keys_to_action("carracing", ["ArrowDown"])
    assert (steer, gas) == (0.0, 0.0) and brake == pytest.approx(0.8)
    assert keys_to_action("carracing", ["ArrowLeft", "ArrowRight"])[0] == 0.0
    assert keys_to_action("carracing", ["KeyQ"]).tolist() == [0.0, 0.0, 0.0]


def test_arrow_keys_press_doom_left_stay_right():
    # read as C's output is read by the game: -1 presses MOVE_LEFT, +1 MOVE_RIGHT
    for keys, direction in ((["ArrowLeft"], -1), ([], 0), (["ArrowRight"], 1)):
        assert doom_direction(keys_to_action("doom", keys)[None]).tolist() == [direction]


# ------------------------------------------------------------------ the session


@pytest.fixture(scope="module")
def models(smoke_run):
    torch.manual_seed(0)
    return load_play_models(smoke_run)


def frame(state, side="dream"):
    import base64

    f = state[side]["frame"]
    raw = np.frombuffer(base64.b64decode(f["rgb"]), np.uint8)
    return raw.reshape(f["height"], f["width"], 3)


def test_a_smoke_run_offers_what_its_models_support(models):
    f = models.features
    assert f["controller"].on and f["real"].on
    assert not f["reward"].on and "reward head" in f["reward"].why
    assert not f["death"].on and "done head" in f["death"].why
    info = models.info()
    assert info["env"] == "carracing" and info["keys"]["ArrowUp"] == "gas"


def test_keys_drive_the_dream_and_the_game_from_the_same_start(models):
    runs = {}
    for keys in (["ArrowLeft", "ArrowUp"], ["ArrowRight", "ArrowUp"]):
        session = PlaySession(models, seed=3)
        try:
            first = session.state()
            for _ in range(12):
                state = session.step(keys)
        finally:
            session.close()
        assert state["dream"]["steps"] == state["real"]["steps"] == 12
        assert state["real"]["action"] == keys_to_action("carracing", keys).tolist()
        assert state["dream"]["action"] == state["real"]["action"]
        runs[keys[0]] = (first, state)
    (first_l, left), (first_r, right) = runs["ArrowLeft"], runs["ArrowRight"]
    assert (frame(first_l) == frame(first_r)).all()  # same seed: same dream start
    assert (frame(first_l, "real") == frame(first_r, "real")).all()  # and the same track
    assert (frame(left, "real") != frame(right, "real")).any()  # the game steered
    assert (frame(left) != frame(right)).any()  # and so did the dream


def test_c_takes_over_and_hands_back(models):
    session = PlaySession(models, seed=1)
    try:
        session.step([])
        obs = session.dream.observe()
        session.set_driver("c")
        state = session.step(["ArrowLeft"])  # keys are ignored while C drives
        expected = controller_actions(session.params, obs, models.spec)[0]
        assert state["driver"] == "c"
        assert state["dream"]["action"] == pytest.approx(expected.tolist(), abs=1e-4)
        assert state["dream"]["action"] != [-1.0, 0.0, 0.0]
        assert state["real"]["action"] != [-1.0, 0.0, 0.0]
        session.set_driver("person")
        assert session.step(["ArrowLeft"])["real"]["action"] == [-1.0, 0.0, 0.0]
    finally:
        session.close()


def test_the_temperature_reaches_m(models):
    def dream_after(tau):
        session = PlaySession(models, seed=5, temperature=tau)
        try:
            for _ in range(6):
                state = session.step(["ArrowUp"])
            return frame(state), state["temperature"]
        finally:
            session.close()

    cold, tau_cold = dream_after(0.05)
    assert tau_cold == 0.05
    assert (dream_after(0.05)[0] == cold).all()  # the same seed and tau dream the same
    assert (dream_after(2.5)[0] != cold).any()  # another tau: another dream


def test_bad_messages_are_answered_and_change_nothing(models):
    session = PlaySession(models, seed=0)
    try:
        session.step(["ArrowUp"])
        before = session.state()
        for text in (
            "{",
            "[]",
            '{"type": "fly"}',
            '{"type": "step", "keys": "ArrowUp"}',
            '{"type": "temperature", "value": "hot"}',
            '{"type": "temperature", "value": -1}',
            '{"type": "temperature", "value": 1e999}',
            '{"type": "reset", "episode": 99999}',
            '{"type": "driver", "value": "robot"}',
            "x" * 10_000,
        ):
            with pytest.raises(ValueError):
                handle_message(session, text)
        assert session.state() == before
        assert handle_message(session, '{"type": "step", "keys": []}')["dream"]["steps"] == 2
    finally:
        session.close()


def copy_run(run: Path, to: Path, leave_out: tuple[str, ...]) -> Path:
    """A copy of a run folder without some of its top-level parts."""
    shutil.copytree(run, to, ignore=lambda d, names: leave_out if Path(d) == run else ())
    return to


def test_a_run_without_c_plays_but_will_not_hand_c_the_wheel(smoke_run, tmp_path):
    run = copy_run(smoke_run, tmp_path / "run", leave_out=("controller", "episodes"))
    models = load_play_models(run, real=False)
    assert not models.features["controller"].on
    assert "no trained controller" in models.features["controller"].why
    assert models.features["real"].why == "turned off (--no-real)"
    session = PlaySession(models)
    try:
        assert session.state()["real"] is None
        with pytest.raises(ValueError, match="C cannot drive: .*no trained controller"):
            session.set_driver("c")
        assert session.step(["ArrowUp"])["dream"]["steps"] == 1
    finally:
        session.close()


def test_a_doom_dream_dies_and_the_game_moves_left(doom_run):
    models = load_play_models(doom_run)
    assert models.env == "doom" and models.features["death"].on
    assert not models.features["reward"].on
    session = PlaySession(models, seed=2, temperature=1.15)
    try:
        state = session.step(["ArrowLeft"])
        assert state["dream"]["action"] == state["real"]["action"] == [-1.0]
        assert frame(state, "real").shape == (120, 160, 3)
        steps = 1
        while not state["dream"]["over"] and steps < 200:
            state = session.step(["ArrowLeft"])
            steps += 1
        # the smoke dream (100 steps at most in training; the page allows the game's 2,100)
        # ends by the done head or plays on; either way the counter matches the steps taken
        assert state["dream"]["steps"] == steps
        if state["dream"]["over"]:
            assert state["dream"]["died"]
            assert session.step([])["dream"]["steps"] == steps  # an ended dream stays ended
    finally:
        session.close()


# ------------------------------------------------------------------ bad input at the CLI


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_run_without_m_or_with_a_corrupt_v_is_named(smoke_run, tmp_path, capsys):
    run = copy_run(smoke_run, tmp_path / "run", leave_out=("episodes", "mdrnn"))
    assert main(["play", str(run), "--port", "0"]) == 2
    assert str(run / "mdrnn" / "mdrnn.pt") in one_line_error(capsys)
    shutil.copytree(smoke_run / "mdrnn", run / "mdrnn")
    (run / "vae" / "vae.pt").write_bytes(b"not a model")
    assert main(["play", str(run), "--port", "0"]) == 2
    assert str(run / "vae" / "vae.pt") in one_line_error(capsys)
    assert main(["play", str(tmp_path / "nowhere")]) == 2
    assert "run folder not found" in one_line_error(capsys)


def test_a_port_in_use_is_named(smoke_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["play", str(smoke_run), "--port", str(port), "--no-real"]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in one_line_error(capsys)


# ------------------------------------------------------------------ the server


@contextmanager
def serving(run_dir: Path, *flags: str):
    """``worldmodels play RUN --port 0`` in its own process; yields (url, process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldmodels", "play", str(run_dir), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url, seen = None, []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if " at http://" in line:
                url = line.split(" at ")[1].split()[0]
        assert url, f"the server did not start: {''.join(seen)}"
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_the_server_steps_with_the_keys_survives_garbage_and_stops_cleanly(smoke_run):
    from websockets.sync.client import connect

    with serving(smoke_run) as (url, proc):
        info = json.loads(urllib.request.urlopen(url + "info", timeout=30).read())
        assert info["env"] == "carracing" and info["features"]["controller"]["on"]
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<canvas" in page and "/ws" in page
        with connect(url.replace("http", "ws") + "ws", open_timeout=60) as ws:
            first = json.loads(ws.recv(timeout=60))
            assert first["dream"]["steps"] == 0
            for k in range(1, 4):
                ws.send(json.dumps({"type": "step", "keys": ["ArrowUp", "ArrowLeft"]}))
                state = json.loads(ws.recv(timeout=60))
                assert state["dream"]["steps"] == state["real"]["steps"] == k
                assert state["real"]["action"] == [-1.0, 1.0, 0.0]
            for bad in ("{", '{"type": "step", "keys": 5}', b"\x00\x01binary"):
                ws.send(bad)
                reply = json.loads(ws.recv(timeout=60))
                assert reply["type"] == "error" and reply["message"]
            ws.send(json.dumps({"type": "temperature", "value": 0.4}))
            assert json.loads(ws.recv(timeout=60))["temperature"] == 0.4
            ws.send(json.dumps({"type": "step", "keys": []}))
            assert json.loads(ws.recv(timeout=60))["dream"]["steps"] == 4
        pid = proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM  # as every command ends on SIGTERM
        assert children_of(pid) == []


# ------------------------------------------------------------------ a real browser


def browser_paths() -> tuple[str, str] | None:
    chromium = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser(tmp_path):
    paths = browser_paths()
    if paths is None:
        why = "no chromium + chromedriver (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: .ci/run installs them, so CI must have them")
        pytest.skip(why)
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=900,760",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


@pytest.mark.parametrize("game", ["carracing", "doom"])
def test_a_browser_plays_the_page(game, request, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    run = request.getfixturevalue("smoke_run" if game == "carracing" else "doom_run")
    with serving(run) as (url, _):
        browser.get(url)
        wait_for(browser, "return window.play && window.play.last")
        canvases = "return ['dream', 'real'].map((c) => document.getElementById(c).toDataURL())"
        before = browser.execute_script(canvases)
        key, expected = {
            "carracing": (Keys.ARROW_UP, [0.0, 1.0, 0.0]),
            "doom": (Keys.ARROW_LEFT, [-1.0]),
        }[game]
        ActionChains(browser).key_down(key).perform()
        # the game goes on while the dream lives; a smoke Doom dream dies within steps
        wait_for(browser, "return window.play.last.real.steps >= 15")
        state = browser.execute_script("return window.play.last")
        ActionChains(browser).key_up(key).perform()
        assert state["real"]["action"] == expected
        after = browser.execute_script(canvases)
        assert after[1] != before[1]  # the game's frames change on screen
        if state["dream"]["died"]:  # M's done head ended the dream: the page says so
            assert "dead after" in browser.find_element(By.ID, "dream-over").text
        else:
            assert state["dream"]["steps"] >= 15 and state["dream"]["action"] == expected
            assert after[0] != before[0]  # and so do the dream's
        browser.save_screenshot(str(tmp_path / f"{game}.png"))

        browser.find_element(By.ID, "driver").click()  # C takes the wheel
        wait_for(browser, "return window.play.last.driver === 'c'")
        steps = browser.execute_script("return window.play.last.real.steps")
        wait_for(browser, f"return window.play.last.real.steps > {steps + 5}")
        state = browser.execute_script("return window.play.last")
        assert state["real"]["action"] != [0.0] * len(expected)  # no key held: C's actions

        browser.execute_script(
            "const s = document.getElementById('temperature');"
            "s.value = 0.5; s.dispatchEvent(new Event('input'));"
        )
        wait_for(browser, "return window.play.last.temperature === 0.5")
        assert browser.find_element(By.ID, "tau").text == "0.50"
        assert browser.execute_script("return window.play.errors") == []
