"""``benchmarks/load_test.py``'s ``ServerClock`` pairs a step's rerun request with the run that answers it, from
real Streamlit protocol messages as the browser's network layer reports them (no server, no browser)."""
from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import load_test


def _event(t: float, msg, opcode: int = 2) -> dict:
    """A CDP ``Network.webSocketFrame*`` event carrying ``msg`` at monotonic time ``t``."""
    return {"timestamp": t, "response": {"opcode": opcode, "payloadData": base64.b64encode(
        msg.SerializeToString()).decode()}}


def _rerun(auto: bool = False) -> BackMsg:
    msg = BackMsg()
    msg.rerun_script.query_string = "grid=6"
    msg.rerun_script.is_auto_rerun = auto
    return msg


def _finished(status: int) -> ForwardMsg:
    msg = ForwardMsg()
    msg.script_finished = status
    return msg


def test_a_step_is_answered_by_the_first_completed_run_after_its_request():
    clock = load_test.ServerClock()
    clock.starts = {"image_grid": 10.0, "pick_images": 20.0}
    F = ForwardMsg.ScriptFinishedStatus
    clock._frame(_event(9.5, _rerun()), sent=True)                          # before the step: not its request
    clock._frame(_event(10.2, _rerun(auto=True)), sent=True)                # a timed fragment's: not a request
    clock._frame(_event(10.3, _rerun()), sent=True)                         # the click
    clock._frame(_event(10.5, _finished(F.FINISHED_EARLY_FOR_RERUN)), sent=False)   # switch_page cut it short
    big = ForwardMsg()
    big.delta.new_element.markdown.body = "x" * 2000                        # page content: not parsed
    clock._frame(_event(10.6, big), sent=False)
    clock._frame(_event(10.9, _finished(F.FINISHED_SUCCESSFULLY)), sent=False)    # the images page, done
    clock._frame(_event(20.1, _rerun()), sent=True)
    clock._frame(_event(20.15, _finished(F.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)), sent=False)
    got = asyncio.run(clock.responses(("image_grid", "pick_images", "overview"), wait_s=0.0))
    assert abs(got["image_grid"] - 0.6) < 1e-9 and abs(got["pick_images"] - 0.05) < 1e-9
    assert "overview" not in got and clock.events == []                     # unanswered: left out; round forgotten


def test_text_frames_and_other_messages_are_no_events():
    clock = load_test.ServerClock()
    clock._frame({"timestamp": 1.0, "response": {"opcode": 1, "payloadData": "hello"}}, sent=True)
    clock._frame({"timestamp": 1.0, "response": {"opcode": 2, "payloadData": "!!not base64"}}, sent=False)
    heartbeat = BackMsg()
    heartbeat.app_heartbeat = True
    clock._frame(_event(1.0, heartbeat), sent=True)
    assert clock.events == []
