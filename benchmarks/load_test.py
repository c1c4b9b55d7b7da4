"""Load test of the explorer: N concurrent browser sessions against one ``streamlit run`` on 127.0.0.1.

    python benchmarks/load_test.py [--flow explore|quiz] [--bundle PATH] [--sessions 8] [--seconds 60]
                                   [--mode hosted|local] [--quiz-images 10]
                                   [--grid 6] [--work DIR] [--json results.json] [--maps fresh|keep]
                                   [--ramp 2] [--per-browser 4] [--step-timeout 120] [--warmup-timeout 300]
                                   [--generator-cpus LIST]

Starts ``streamlit run streamlit_app.py`` headless on 127.0.0.1 and a free port, on ``--bundle`` or (without
one) on a bundle it builds first: ``asap_core/demo_data`` (300 JPEGs) analysed with a random CLIP from
``asap_core.pipeline.demo.write_random_clip`` (no download). ``--mode hosted`` (default) serves it the public way
(``ASAP_HOSTED=1``, the bundle's parent folder as ``ASAP_BUNDLE_ROOT``, the bundle picked by name);
``--mode local`` with ``ASAP_BUNDLE=PATH``.

Then one headless Chromium (Debian's, ``/usr/bin/chromium``) with one context per session; each session
loops, until ``--seconds`` have passed (a round that has started finishes, bounded by ``--step-timeout``
per step). Session i arrives ``i * --ramp`` seconds after the first, as a load tester's spawn rate does
(``--ramp 0``: all at once, which measures 8 or 20 Chromium contexts starting together on the load generator):

1. ``overview``: open the app (a new Streamlit session) -> the pie of the round's cell is drawn
2. ``select_cell``: click the cell's largest slice -> "Selected cell: C" and the "Open image grid" button
3. ``image_grid``: click "Open image grid" -> the heading "Cell C · n images" and all n thumbnails
4. ``pick_images``: brush three thumbnails in a row -> "k images picked"
5. ``attention_maps``: click "Show attention maps" -> 18 decoded tiles per picked image (maps computed on
   demand the first time a picked image is seen, cached afterwards)

Sessions start on different cells and move through the cells with n >= 5 images (a row of three to brush), so early
rounds compute relevance maps concurrently and later rounds read them from the cache. Latency of a step = action
until the expected element is visible. An error is an exception (timeout, wrong count) or a Streamlit exception /
``st.error`` block on the page; the round is then abandoned and the session goes on with the next one. Prints median
/ 95th percentile / max per step and the errors; exit status 1 when there was any error.

``--flow quiz`` (a class playing one quiz link): the script starts a class round of the quiz
``all:<--quiz-images>:42`` in the server's state store (``ASAP_STATE_URL`` set to an SQLite file in the work
folder), then each session (a student; session i arrives ``i * --ramp`` s after the first: ``--sessions 30
--ramp 2`` is a class opening the link within a minute) opens the round's link once and plays it to the score:

1. ``open_quiz``: open the link (a new Streamlit session) -> "Image 1 of n" and the picture decoded
2. ``answer``: click Real or AI -> "Image i of n: the answer" and its picture decoded (repeated n times)
3. ``next``: click "Next image" -> the next question, or the score after the last one (repeated n times)

Latencies per step over all students, the server's CPU seconds per step (calibration: one student alone,
first occurrence of each step on an idle server; under load: shared attribution as below), errors, and the
check that the round recorded exactly sessions x n answers (a missing one is an error).

Before the concurrent phase (each part can be skipped):

- warm-up (``--no-warmup``): one session, one round on a cell no session starts on: the server's imports, the
  CLIP load, the first maps. Its steps have their own bound (``--warmup-timeout``, 300 s); a warm-up that is
  merely slow (even past that bound) is reported, not counted as an error. An error block on its page is one.
- calibration (``--no-calibration``): one browser runs two rounds on one more cell, each in a new page (a new
  Streamlit session), each step after the server has gone idle; for each step the server's CPU seconds (utime +
  stime of the ``streamlit`` process and its children, from ``/proc``) from the action until the result is
  visible and until the server is idle again (the whole rerun). The first round is a first visit: the browser
  fetches the front end's files and the server computes the cell's grid and maps; the second finds all of them
  cached (as a browser does on its next visit, or any browser behind ``deploy/nginx.conf``, which caches those
  files). Meanwhile one more session keeps the overview open and idle: Streamlit forgets its compiled page
  scripts whenever no session is connected, which a server with visitors never pays for.

Server CPU seconds are the figure that transfers to another host: on a small machine the load generator's
Chromium competes with the server for the cores, so latencies there mostly measure that contention. In the
concurrent phase the server's CPU time is sampled every 0.25 s and each sample is split evenly between the
steps in flight (shared attribution: approximate per step, exact in total); the report gives the server's
utilisation (CPU seconds / wall seconds), the load generator's and the whole machine's.

Each step's server response (a column apart from its latency): from the step's rerun request leaving the page
to the server's "script finished" arriving, both read at the browser's network layer (``ServerClock``, Chrome
DevTools Protocol timestamps): the server's queueing and work without the browser's drawing, which on a small
machine waits for the load generator's saturated core.

The server runs with ``ASAP_LOG_RUNS=1``: its log gets a line per page run and per fragment rerun, with the
run's wall and CPU seconds as the server measured them. The report lists them per page or fragment for the
concurrent phase (median / p95 / max wall seconds): the server's part of a step without the browser's, on the
server's own cores.

Each step's cost apart from its latency (separate columns, never added to it): the KB the pages received
during it (websocket frames, Streamlit's protocol, and HTTP response bodies such as media files), the
concurrent phase's server CPU divided by the steps ended, and with ``--sessions 1`` each step's own server
CPU from its start to its end. ``--generator-cpus 0`` pins this script, its playwright driver and Chromium
to CPU 0 and the server to the other CPUs (``sched_setaffinity``), so the server's figures are those of a host
whose cores serve only the app; a machine with too few CPUs runs unpinned and the output says so.

The server gets ``ASAP_RELEVANCE_BUDGET=100000`` (hosted mode charges maps per client address and day, and
every session here comes from 127.0.0.1); ``ASAP_HEAVY_SLOTS`` and other settings pass through from the
environment. The "Waiting for a free slot" box (``st.info``) is no error; rounds that saw it are counted.
``--maps fresh`` (default for the demo bundle) deletes the bundle's cached relevance maps before the server
starts, so maps are computed on demand in every run even with a reused ``--work``; ``--maps keep`` (default
for ``--bundle``) keeps them.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_helpers import (  # noqa: E402
    CELL_SLICES,
    CHROMIUM,
    CHROMIUM_ARGS,
    ERROR_BLOCKS,
    ERRORS_JS,
    GRID_IMAGES,
    IMAGES_DECODED_JS,
    MAIN_IMAGES,
    PICKED_TEXT,
    SLICES_JS,
    brush_path,
    slice_click_point,
    streamlit_server,
)

# A load generator's browser must not throttle the pages it does not show: headless Chromium treats every
# context but one as a background page (timers throttled, rendering deferred), which stalls Streamlit's
# front end for tens of seconds while both the server and the machine sit idle.
LOADGEN_ARGS = CHROMIUM_ARGS + ["--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                                "--disable-backgrounding-occluded-windows", "--disable-ipc-flooding-protection"]
STEPS = ("overview", "select_cell", "image_grid", "pick_images", "attention_maps")
PAGES = {"overview": "overview page, new session", "select_cell": "overview page rerun",
         "image_grid": "images page", "pick_images": "images page rerun", "attention_maps": "attention page"}
TILES_PER_IMAGE = 18  # the image, the fake-logit map and 16 dimension maps
RELEVANCE_BUDGET = "100000"  # hosted mode's per-client budget: all sessions here share 127.0.0.1's
SLOT_WAIT_TEXT = re.compile(r"^Waiting for a free slot")
SAMPLE_S = 0.25  # period of the server CPU sampler in the concurrent phase
BETWEEN = "(between steps)"
#: the calibration's two rounds, in one browser context (two pages: two sessions): the first visit fetches the
#: front end's files and computes the cell's grid and maps; the second finds all of them cached
CALIBRATION_ROUNDS = ("first visit", "second visit (front end, grid and maps cached)")


# ------------------------------------------------------------------------------------------ CPU accounting
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 = index 0)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int, skip: int | None = None) -> Iterator[int]:
    """``pid`` and its live descendants, each once, leaving out ``skip`` and its own descendants."""
    todo, seen = [pid], {skip}
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        yield p
        todo += _children(p)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``, its reaped children (cutime + cstime) and its live descendants;
    0.0 once the process is gone."""
    total = 0
    for p in process_tree(pid):
        try:
            f = _stat_fields(p)
        except (OSError, ValueError):
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
    return total / _TICK


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, all cores, since boot; total CPU seconds), from ``/proc/stat``."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])
    return (total - idle) / _TICK, total / _TICK


class NullProbe:
    """Called around each step of a round; does nothing."""

    def begin(self, step: str) -> None:
        pass

    def end(self, step: str) -> None:
        pass

    async def visible(self, step: str, latency: float) -> None:
        pass


@dataclass
class StepCost:
    """What the concurrent phase's steps cost apart from their latency, summed over all sessions."""

    received: dict[str, int] = field(default_factory=dict)  # step -> bytes the browser received (ws + HTTP)
    exact_cpu: dict[str, float] = field(default_factory=dict)  # step -> server CPU s, begin to end (1 session)


class InFlight(NullProbe):
    """Which step each session is in (concurrent phase), for the sampler's shared attribution; with ``cost``,
    the bytes its page receives per step, and with ``pid`` (one session only: the delta is then the step's own)
    the server's CPU seconds from each step's start to its end."""

    def __init__(self, key: int, table: dict[int, str], ended: dict[str, int], cost: StepCost | None = None,
                 pid: int | None = None) -> None:
        self.key, self.table, self.ended, self.cost, self.pid = key, table, ended, cost, pid
        self.step, self._c0 = BETWEEN, 0.0

    def begin(self, step: str) -> None:
        self.table[self.key] = self.step = step
        if self.pid is not None:
            self._c0 = tree_cpu(self.pid)

    def end(self, step: str) -> None:
        self.step = BETWEEN
        if self.table.pop(self.key, None) is not None:
            self.ended[step] = self.ended.get(step, 0) + 1
            if self.pid is not None and self.cost is not None:
                self.cost.exact_cpu[step] = self.cost.exact_cpu.get(step, 0.0) + tree_cpu(self.pid) - self._c0

    def _add(self, step: str, n: int) -> None:
        if self.cost is not None:
            self.cost.received[step] = self.cost.received.get(step, 0) + n

    def attach(self, page) -> None:
        """Count what ``page`` receives: websocket frames (Streamlit's protocol) and HTTP response bodies
        (media files such as thumbnails and map tiles, static assets), each to the step in flight when it
        arrived (``BETWEEN`` when none is)."""
        def frame(payload) -> None:
            self._add(self.step, len(payload.encode() if isinstance(payload, str) else payload))

        async def body(request, step: str) -> None:
            try:
                self._add(step, max((await request.sizes()).get("responseBodySize", 0), 0))
            except Exception:  # the context closed first: the bytes are not known any more
                pass

        page.on("websocket", lambda ws: ws.on("framereceived", frame))
        page.on("requestfinished", lambda req: asyncio.ensure_future(body(req, self.step)))


#: a ForwardMsg this long or longer carries page content, never "script finished" (not parsed)
_SMALL_FRAME = 512


class ServerClock(NullProbe):
    """The server's part of each step's latency, read at the browser's network layer through the Chrome
    DevTools Protocol: from the step's first rerun request leaving the page (Streamlit's ``BackMsg``
    ``rerun_script``, not a timed fragment's) to the first completed run's "script finished" arriving
    (``ForwardMsg`` ``script_finished``: a page or a fragment run, not one cut short for another run). It
    holds the server's queueing, its work and loopback, not the browser's drawing: what a host whose cores serve
    only the app would answer within. The protocol's timestamps are the browser's monotonic clock, Linux's
    ``CLOCK_MONOTONIC``, the clock of ``time.monotonic``. Wraps the probe of the step (``inner``)."""

    DONE = (0, 3)  # FINISHED_SUCCESSFULLY, FINISHED_FRAGMENT_RUN_SUCCESSFULLY

    def __init__(self, inner: NullProbe | None = None) -> None:
        self.inner = inner or NullProbe()
        self.starts: dict[str, float] = {}
        self.events: list[tuple[float, str]] = []  # (monotonic s, "rerun" | "done")

    async def attach(self, page) -> None:
        """Listen to ``page``'s websocket frames (before it opens its websocket)."""
        cdp = await page.context.new_cdp_session(page)
        cdp.on("Network.webSocketFrameSent", lambda ev: self._frame(ev, sent=True))
        cdp.on("Network.webSocketFrameReceived", lambda ev: self._frame(ev, sent=False))
        await cdp.send("Network.enable")

    def _frame(self, ev: dict, sent: bool) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        frame = ev.get("response", {})
        data = frame.get("payloadData", "")  # base64 of a binary frame
        if frame.get("opcode") != 2 or (not sent and len(data) > 4 * _SMALL_FRAME // 3 + 4):
            return
        try:
            raw = base64.b64decode(data)
            if sent:
                msg = BackMsg.FromString(raw)
                if msg.WhichOneof("type") == "rerun_script" and not msg.rerun_script.is_auto_rerun:
                    self.events.append((float(ev["timestamp"]), "rerun"))
            else:
                fwd = ForwardMsg.FromString(raw)
                if fwd.WhichOneof("type") == "script_finished" and fwd.script_finished in self.DONE:
                    self.events.append((float(ev["timestamp"]), "done"))
        except Exception:  # not Streamlit's protocol (or cut): not a step's event
            return

    def begin(self, step: str) -> None:
        self.starts[step] = time.monotonic()
        self.inner.begin(step)

    def end(self, step: str) -> None:
        self.inner.end(step)

    async def visible(self, step: str, latency: float) -> None:
        await self.inner.visible(step, latency)

    def _response(self, step: str) -> float | None:
        t0 = self.starts.get(step)
        asked = next((t for t, kind in self.events if kind == "rerun" and t0 is not None and t >= t0), None)
        done = next((t for t, kind in self.events if kind == "done" and asked is not None and t >= asked), None)
        return None if done is None or asked is None else done - asked

    async def responses(self, steps: tuple[str, ...], wait_s: float = 5.0) -> dict[str, float]:
        """Each step's server response (seconds) for the round just ended, waiting up to ``wait_s`` for events
        still on their way; then forgets the round."""
        deadline = time.monotonic() + wait_s
        while any(self._response(s) is None for s in steps) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        out = {s: r for s in steps if (r := self._response(s)) is not None}
        self.events.clear()
        self.starts.clear()
        return out


async def sample_server_cpu(pid: int, inflight: dict[int, str], attributed: dict[str, float],
                            stop: asyncio.Event) -> None:
    """Every ``SAMPLE_S``: the server's CPU seconds since the last sample, split evenly between the steps in
    flight (``BETWEEN`` when none is)."""
    prev = tree_cpu(pid)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except asyncio.TimeoutError:
            pass
        now = tree_cpu(pid)
        d, prev = now - prev, now
        kinds = list(inflight.values()) or [BETWEEN]
        for k in kinds:
            attributed[k] = attributed.get(k, 0.0) + d / len(kinds)


async def wait_server_idle(pid: int, quiet_s: float = 0.5, below: float = 0.02, cap_s: float = 60.0) -> float:
    """Wait until the server used less than ``below`` CPU seconds over ``quiet_s`` (at most ``cap_s``);
    returns its CPU seconds at that moment."""
    deadline = time.monotonic() + cap_s
    hist = [(time.monotonic(), tree_cpu(pid))]
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        hist.append((time.monotonic(), tree_cpu(pid)))
        t, c = hist[-1]
        old = [h for h in hist if t - h[0] >= quiet_s]
        if old and c - old[-1][1] < below:
            return c
    return hist[-1][1]


@dataclass
class StepCpu:
    latency: float
    cpu_visible: float  # server CPU s from the action until the result was visible
    cpu_rerun: float  # ... until the server was idle again


class Calibrate(NullProbe):
    """One session alone: server CPU per step, each step started on an idle server."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.steps: dict[str, StepCpu] = {}
        self._c0 = 0.0

    async def idle(self) -> None:
        await wait_server_idle(self.pid)

    def begin(self, step: str) -> None:
        self._c0 = tree_cpu(self.pid)

    async def visible(self, step: str, latency: float) -> None:
        c_vis = tree_cpu(self.pid)
        c_end = await wait_server_idle(self.pid)
        self.steps[step] = StepCpu(latency, c_vis - self._c0, c_end - self._c0)


# ------------------------------------------------------------------------------------------ CPU pinning
def parse_cpus(text: str) -> set[int]:
    """``"0"``, ``"0,2"``, ``"0-1,4"`` -> the set of CPU numbers."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _set_tree_affinity(pid: int, cpus: set[int], skip: int | None = None) -> None:
    """Every thread of ``pid`` and of its live descendants but ``skip``'s tree onto ``cpus`` (a thread keeps the
    affinity it had when its process was pinned, so each one is set; later children inherit it)."""
    for p in process_tree(pid, skip):
        try:
            tids = [int(t.name) for t in Path(f"/proc/{p}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:  # the thread ended meanwhile
                pass


def pin_processes(spec: str | None, server_pid: int) -> str:
    """With ``--generator-cpus``: this script (and so the playwright driver and Chromium it starts later) onto
    those CPUs, the server (already started, a child of this script) onto the others; the line that says what
    was done, or why not."""
    if not spec:
        return "load generator and server share all CPUs (no --generator-cpus)"
    usable = os.sched_getaffinity(0)
    gen = parse_cpus(spec) & usable
    server = usable - gen
    if not gen or not server:
        return (f"--generator-cpus {spec}: not pinned, this machine offers CPUs {sorted(usable)} and both the load "
                f"generator and the server need at least one of their own")
    _set_tree_affinity(server_pid, server)
    _set_tree_affinity(os.getpid(), gen, skip=server_pid)  # the server is a child of this process
    return f"load generator pinned to CPUs {sorted(gen)}, server to CPUs {sorted(server)}"


# ------------------------------------------------------------------------------------------ bundle
def build_demo_bundle(work: Path) -> Path:
    """``asap_core/demo_data`` analysed with a random CLIP into ``work/bundles/demo`` (reused when there)."""
    from asap_core.errors import BundleError
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.pipeline.demo import DEMO_DATA, RANDOM_CLIP, write_random_clip
    from asap_core.storage.bundle import Bundle

    out = work / "bundles" / "demo"
    try:
        Bundle.open(out)
        print(f"reusing {out}", flush=True)
        return out
    except BundleError:
        pass
    clip = work / "random-clip"
    if not (clip / "config.json").is_file():
        write_random_clip(clip, **RANDOM_CLIP)
    t0 = time.perf_counter()
    analyze(DEMO_DATA, out, AnalyzeOptions(model=str(clip), cache_dir=str(work / "analyze-cache"), num_workers=0))
    print(f"built {out} in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def clear_maps(bundle_path: Path) -> int:
    """Delete the bundle's cached relevance maps (its ``cache/rel-*`` stores; the server is not running yet);
    returns how many stores were removed."""
    from asap_core.storage.bundle import Bundle

    cache = Bundle.open(bundle_path).cache_dir
    stores = [d for d in cache.glob("rel-*") if d.is_dir()] if cache.is_dir() else []
    for d in stores:
        shutil.rmtree(d)
    return len(stores)


def cell_plan(bundle_path: Path, grid: int, min_images: int = 5) -> list[tuple[int, int]]:
    """(cell, n shown on the image page) of the cells with at least ``min_images`` images, biggest first. Five:
    the image page lays n images out ceil(sqrt(n)) to a row, so 3 or 4 images never fill a row of three to
    brush (the pick step)."""
    from asap_core.method.layout import regrid
    from asap_core.storage.bundle import Bundle
    from asap_core.views.grid import MAX_GRID_IMAGES

    _, cells = regrid(Bundle.open(bundle_path).images, grid)
    cells = cells[cells["n"] >= min_images].sort_values(["n", "cell"], ascending=False)
    return [(int(c), min(int(n), MAX_GRID_IMAGES)) for c, n in zip(cells["cell"], cells["n"])]


# ------------------------------------------------------------------------------------------ sessions
@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rounds: int = 0
    maps_shown: int = 0
    slot_waits: int = 0  # attention_maps steps that showed "Waiting for a free slot"
    #: step -> the server's response times (``ServerClock``): rerun request out -> script finished in
    server: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})


class PageError(RuntimeError):
    """An error block on the page, or the page not showing what the step expects."""


async def _check_page(page, step: str) -> None:
    texts = await page.evaluate(ERRORS_JS)
    if texts:
        raise PageError(f"{step}: error block on the page: {texts[0]!r}")


async def expect(page, step: str, *waits) -> None:
    """Await ``waits`` (coroutines) in order; fail at once when an error block appears meanwhile.
    Only ``ERROR_BLOCKS`` (``stException``, ``stAlertContentError``) count: ``st.info`` boxes such as
    "Waiting for a free slot" do not."""
    err = asyncio.ensure_future(page.wait_for_selector(ERROR_BLOCKS, state="attached", timeout=0))
    pending = list(waits)
    try:
        while pending:
            task = asyncio.ensure_future(pending.pop(0))
            done, _ = await asyncio.wait({task, err}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                await _check_page(page, step)
                raise PageError(f"{step}: error block on the page")
            task.result()
    finally:
        err.cancel()
        for w in pending:  # not started: close them (no "never awaited" warnings)
            w.close()
    await _check_page(page, step)


# viewport boxes {x, y, width, height} of the thumbnails on the image page
BOXES_JS = (f"() => [...document.querySelectorAll({GRID_IMAGES!r})].map(e => {{ const r = e.getBoundingClientRect();"
            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })")


def three_in_a_row(boxes: list[dict]) -> tuple[dict, dict]:
    """(first, third) of three neighbouring thumbnails in the top row that holds three: a brush from the first
    to the third picks exactly those three, whatever the grid's layout (the first three in page order need not
    share a row: a cell of 7 shows 1 + 3 + 3)."""
    rows: dict[int, list[dict]] = {}
    for b in boxes:
        rows.setdefault(round(b["y"]), []).append(b)
    for y in sorted(rows):
        row = sorted(rows[y], key=lambda b: b["x"])
        if len(row) >= 3:
            return row[0], row[2]
    raise PageError(f"pick_images: no row of 3 thumbnails among {len(boxes)}")


@asynccontextmanager
async def timed(step: str, times: dict[str, float], probe: NullProbe):
    """Latency of the block into ``times[step]`` when it succeeds; ``probe`` told when it starts and ends."""
    probe.begin(step)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        probe.end(step)
    times[step] = time.perf_counter() - t0
    await probe.visible(step, times[step])


async def dismiss_guide(page, wait_ms: int = 30000) -> None:
    """Close the "How to read this" dialog a new session opens once (it covers the page; not timed). Under load
    it can appear seconds after the overview, so this waits for it up to ``wait_ms``."""
    got = page.get_by_role("button", name="Got it")
    try:
        await got.wait_for(state="visible", timeout=wait_ms)
    except Exception:
        return
    await got.click()
    await page.get_by_role("dialog").wait_for(state="detached")


async def one_round(page, url: str, grid: int, cell: int, n_shown: int, res: Results,
                    probe: NullProbe | None = None) -> None:
    """The five steps for one cell; latencies go to ``res`` only when the whole round succeeds."""
    probe = probe or NullProbe()
    times: dict[str, float] = {}

    async with timed("overview", times, probe):
        await page.goto(f"{url}/?grid={grid}")
        await expect(page, "overview", page.wait_for_selector(CELL_SLICES.format(cell=cell), state="visible"))
    await dismiss_guide(page)

    open_grid = page.get_by_role("button", name="Open image grid")
    # a pie near the map's lower edge can lie below the fold of the window: bring it into view first (mouse
    # clicks go to window coordinates)
    await page.locator(CELL_SLICES.format(cell=cell)).first.scroll_into_view_if_needed()
    async with timed("select_cell", times, probe):
        await page.mouse.click(*slice_click_point(await page.evaluate(SLICES_JS, cell)))
        await expect(page, "select_cell", page.get_by_text(f"Selected cell: {cell}").wait_for(), open_grid.wait_for())

    images = page.locator(GRID_IMAGES)
    async with timed("image_grid", times, probe):
        await open_grid.click()
        await expect(page, "image_grid", page.get_by_text(re.compile(rf"^Cell {cell} · [\d,]+ images$")).wait_for(),
                     images.nth(n_shown - 1).wait_for(state="visible"))
    if await images.count() != n_shown:
        raise PageError(f"image_grid: {await images.count()} thumbnails, expected {n_shown}")

    start, end = brush_path(*three_in_a_row(await page.evaluate(BOXES_JS)))
    picked = page.get_by_text(PICKED_TEXT)
    async with timed("pick_images", times, probe):
        await page.mouse.move(*start)
        await page.mouse.down()
        await page.mouse.move(*end, steps=8)
        await page.mouse.up()
        await expect(page, "pick_images", picked.wait_for())
    n_picked = int((await picked.inner_text()).split()[0])

    waited = asyncio.ensure_future(page.get_by_text(SLOT_WAIT_TEXT).wait_for(state="attached", timeout=0))
    try:
        async with timed("attention_maps", times, probe):
            await page.get_by_role("button", name="Show attention maps").click()
            await expect(page, "attention_maps", page.get_by_text("Contributions to the fake logit").wait_for(),
                         page.wait_for_function(IMAGES_DECODED_JS, arg=n_picked * TILES_PER_IMAGE))
        saw_slot_wait = waited.done() and not waited.cancelled() and waited.exception() is None
    finally:
        waited.cancel()
    n_tiles = await page.locator(MAIN_IMAGES).count()
    if n_tiles != n_picked * TILES_PER_IMAGE:
        raise PageError(f"attention_maps: {n_tiles} tiles for {n_picked} picked images")

    for step, dt in times.items():
        res.latencies[step].append(dt)
    if isinstance(probe, ServerClock):
        for step, dt in (await probe.responses(STEPS)).items():
            res.server[step].append(dt)
    res.rounds += 1
    res.maps_shown += n_picked
    res.slot_waits += int(saw_slot_wait)


async def _record_error(res, args, page, msg: str, shot: str) -> None:
    """Count and print one failed step; with ``--shots``, keep a screenshot of the page as it was."""
    res.errors.append(msg)
    print("ERROR", msg, flush=True)
    if args.shots:
        try:
            await page.screenshot(path=str(Path(args.shots) / shot), full_page=True)
        except Exception:
            pass


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


async def session(i: int, browser, url: str, args, plan: list[tuple[int, int]], deadline: float,
                  res: Results, inflight: dict[int, str], ended: dict[str, int], cost: StepCost,
                  pid: int | None = None) -> None:
    """One browser context looping rounds until ``deadline`` (a started round finishes or times out); it
    arrives ``i * args.ramp`` seconds after the first (visitors do not all arrive in the same instant)."""
    await asyncio.sleep(i * args.ramp)
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(args.step_timeout * 1000)
    inner = InFlight(i, inflight, ended, cost, pid)
    inner.attach(page)
    probe = ServerClock(inner)
    await probe.attach(page)
    j = 0
    try:
        while time.monotonic() < deadline:
            cell, n = plan[(i + j * args.sessions) % len(plan)]
            j += 1
            try:
                await asyncio.wait_for(one_round(page, url, args.grid, cell, n, res, probe),
                                       timeout=args.step_timeout * len(STEPS))
            except Exception as exc:
                await _record_error(res, args, page, f"session {i} round {j} (cell {cell}): {_describe(exc)}",
                                    f"error_s{i}_r{j}.png")
    finally:
        await ctx.close()


@dataclass
class Run:
    res: Results
    warm: Results | None = None
    warm_wall: float = 0.0
    warm_cpu: float = 0.0  # server CPU s of the warm-up round
    start_cpu: float = 0.0  # server CPU s from its start until the warm-up
    calib: list[Calibrate] = field(default_factory=list)  # one per CALIBRATION_ROUNDS
    calib_errors: list[str] = field(default_factory=list)
    wall: float = 0.0  # concurrent phase
    server_cpu: float = 0.0  # ... server CPU s
    loadgen_cpu: float = 0.0  # ... CPU s of this script, its playwright driver and Chromium
    machine_cpu: float = 0.0  # ... busy CPU s of the whole machine
    attributed: dict[str, float] = field(default_factory=dict)  # step -> server CPU s (shared attribution)
    ended: dict[str, int] = field(default_factory=dict)  # step -> steps ended (done or failed)
    cost: StepCost = field(default_factory=StepCost)  # bytes received per step; exact CPU with one session
    log_span: tuple[int, int] = (0, 0)  # the server log's bytes written during the concurrent phase


async def _single_round(browser, url: str, args, cell: int, n: int, res: Results, step_timeout: float,
                        probe: NullProbe | None = None, ctx=None):
    """One round in a new page (a new Streamlit session), closed afterwards: in ``ctx`` when given (a browser
    that already holds the front end's files from an earlier page), else in a fresh context (a first visit)."""
    own = ctx is None
    if own:
        ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(step_timeout * 1000)
    try:
        await asyncio.wait_for(one_round(page, url, args.grid, cell, n, res, probe),
                               timeout=step_timeout * len(STEPS))
    finally:
        await (ctx.close() if own else page.close())


@asynccontextmanager
async def bystander(browser, url: str):
    """A visitor who keeps the overview open and does nothing: Streamlit forgets its compiled page scripts
    whenever no session is left, so without one every calibration round would pay for compiling them,
    which a server with visitors does not."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await ctx.new_page()
        await page.goto(url)
        await page.wait_for_selector(".vega-embed path[aria-label]", state="attached")
        yield page
    finally:
        await ctx.close()


async def drive(url: str, args, plan: list[tuple[int, int]], pid: int) -> Run:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LOADGEN_ARGS)
        run = Run(Results())
        try:
            run.start_cpu = tree_cpu(pid)
            if not args.no_warmup:
                run.warm = Results()
                cell, n = plan[-1]  # a cell no session starts on
                c0, t0 = tree_cpu(pid), time.monotonic()
                try:
                    await _single_round(browser, url, args, cell, n, run.warm, args.warmup_timeout)
                except Exception as exc:
                    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__:
                        run.warm.warnings.append(f"warm-up not done within --warmup-timeout {args.warmup_timeout:.0f} "
                                                 f"s per step (slow, not counted as an error): {_describe(exc)}")
                    else:
                        run.warm.errors.append(f"warm-up: {_describe(exc)}")
                run.warm_wall, run.warm_cpu = time.monotonic() - t0, tree_cpu(pid) - c0
            if not args.no_calibration:
                cell, n = plan[-2] if len(plan) > 2 else plan[-1]
                async with bystander(browser, url):
                    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
                    try:
                        for label in CALIBRATION_ROUNDS:
                            probe = Calibrate(pid)
                            await probe.idle()
                            try:
                                await _single_round(browser, url, args, cell, n, Results(), args.step_timeout, probe,
                                                    ctx)
                            except Exception as exc:
                                run.calib_errors.append(f"calibration, {label} (cell {cell}): {_describe(exc)}")
                                print("ERROR", run.calib_errors[-1], flush=True)
                            run.calib.append(probe)
                    finally:
                        await ctx.close()
                await wait_server_idle(pid)

            inflight: dict[int, str] = {}
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(sample_server_cpu(pid, inflight, run.attributed, stop))
            me = os.getpid()
            c0, l0, (m0, _) = tree_cpu(pid), tree_cpu(me), machine_busy()
            log0 = log_size(args.server_log)
            t0 = time.monotonic()
            deadline = t0 + args.seconds
            # one browser process drives at most --per-browser sessions: its single UI thread carries every
            # context's IPC, and with 20 contexts it, not the server, sets the pace
            browsers = [browser] + [await p.chromium.launch(executable_path=CHROMIUM, args=LOADGEN_ARGS)
                                    for _ in range(1, -(-args.sessions // max(args.per_browser, 1)))]
            try:
                exact = pid if args.sessions == 1 else None
                await asyncio.gather(*(session(i, browsers[i % len(browsers)], url, args, plan, deadline, run.res,
                                               inflight, run.ended, run.cost, exact) for i in range(args.sessions)))
                stop.set()
                await sampler
                run.wall = time.monotonic() - t0
                run.server_cpu = tree_cpu(pid) - c0
                run.log_span = (log0, log_size(args.server_log))
                run.loadgen_cpu = (tree_cpu(me) - l0) - run.server_cpu  # the server is a child of this script
                run.machine_cpu = machine_busy()[0] - m0
            finally:  # closed after the measurement: a closed browser's CPU time leaves the process tree
                for extra in browsers[1:]:
                    await extra.close()
            return run
        finally:
            await browser.close()


# ------------------------------------------------------------------------------------------ the quiz flow
QUIZ_STEPS = ("open_quiz", "answer", "next")
QUIZ_PAGES = {"open_quiz": "quiz link, new session", "answer": "the reveal", "next": "next image / the score"}
QUIZ_SEED = 42


class FirstCalibrate(Calibrate):
    """``Calibrate`` that keeps the first occurrence of a step (a quiz repeats ``answer`` and ``next``)."""

    async def visible(self, step: str, latency: float) -> None:
        if step not in self.steps:
            await super().visible(step, latency)


def start_class_round(state_url: str, bundle_path: Path, link_bundle: str, n: int) -> tuple[str, list[str]]:
    """Start a class round of ``all:n:QUIZ_SEED`` on the bundle in the store at ``state_url``: (code, ids)."""
    from asap_core.storage.bundle import Bundle
    from asap_core.storage.class_rounds import ClassRounds
    from asap_core.storage.state_store import StateStore
    from asap_core.views import quiz as vq

    spec = vq.QuizSpec("all", "", n, QUIZ_SEED)
    ids = vq.quiz_images(Bundle.open(bundle_path).images, spec)
    rnd = ClassRounds(StateStore.from_url(state_url)).start(link_bundle, spec.to_param(), ids)
    return rnd.code, ids


def recorded_answers(state_url: str, code: str) -> int:
    from asap_core.storage.class_rounds import ClassRounds
    from asap_core.storage.state_store import StateStore

    return len(ClassRounds(StateStore.from_url(state_url)).answers(code))


async def quiz_play(page, link: str, n: int, res: Results, probe: NullProbe | None = None, seed: int = 0) -> None:
    """One student: open the link, answer the ``n`` images, reach the score; latencies go to ``res`` only when
    the whole play succeeds."""
    probe = probe or NullProbe()
    got: dict[str, list[float]] = {s: [] for s in QUIZ_STEPS}

    async def step(name: str, *waits) -> None:
        times: dict[str, float] = {}
        async with timed(name, times, probe):
            await expect(page, name, *waits)
        got[name].append(times[name])

    async def opened():
        await page.goto(link)
        await page.get_by_text(f"Image 1 of {n}", exact=True).wait_for()

    await step("open_quiz", opened(), page.wait_for_function(IMAGES_DECODED_JS, arg=1))
    for i in range(n):
        said = "ai" if (seed + i) % 2 else "real"

        async def answered(i=i, said=said):
            await page.locator(f".st-key-quiz_{said} button").click()
            await page.get_by_text(f"Image {i + 1} of {n}: the answer").wait_for()

        await step("answer", answered(), page.wait_for_function(IMAGES_DECODED_JS, arg=1))

        async def nexted(i=i):
            await page.locator(".st-key-quiz_next button").click()
            if i + 1 < n:
                await page.get_by_text(f"Image {i + 2} of {n}", exact=True).wait_for()
            else:
                await page.get_by_text("Your score").wait_for()

        await step("next", nexted())
    for name, values in got.items():
        res.latencies[name] += values
    res.rounds += 1


async def quiz_student(i: int, browser, link: str, args, res: Results, inflight: dict[int, str],
                       ended: dict[str, int], cost: StepCost, pid: int | None = None) -> None:
    """Student ``i``: arrives ``i * args.ramp`` s after the first, plays the quiz once in its own context."""
    await asyncio.sleep(i * args.ramp)
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await ctx.new_page()
    page.set_default_timeout(args.step_timeout * 1000)
    probe = InFlight(i, inflight, ended, cost, pid)
    probe.attach(page)
    try:
        await asyncio.wait_for(quiz_play(page, link, args.quiz_images, res, probe, seed=i),
                               timeout=args.step_timeout * (1 + 2 * args.quiz_images))
    except Exception as exc:
        await _record_error(res, args, page, f"student {i}: {_describe(exc)}", f"error_student{i}.png")
    finally:
        await ctx.close()


async def _quiz_alone(browser, link: str, args, res: Results, probe: NullProbe, timeout: float) -> None:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await ctx.new_page()
    page.set_default_timeout(timeout * 1000)
    try:
        await asyncio.wait_for(quiz_play(page, link, args.quiz_images, res, probe),
                               timeout=timeout * 3 * args.quiz_images)
    finally:
        await ctx.close()


async def drive_quiz(link: str, warm_link: str, args, pid: int) -> Run:
    """Warm-up (one play of another quiz: imports, first pictures), calibration (one student alone), then
    ``args.sessions`` students on ``link``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LOADGEN_ARGS)
        run = Run(Results(latencies={s: [] for s in QUIZ_STEPS}))
        try:
            run.start_cpu = tree_cpu(pid)
            if not args.no_warmup:
                run.warm = Results(latencies={s: [] for s in QUIZ_STEPS})
                c0, t0 = tree_cpu(pid), time.monotonic()
                try:
                    await _quiz_alone(browser, warm_link, args, run.warm, NullProbe(), args.warmup_timeout)
                except Exception as exc:
                    run.warm.errors.append(f"warm-up: {_describe(exc)}")
                run.warm_wall, run.warm_cpu = time.monotonic() - t0, tree_cpu(pid) - c0
            if not args.no_calibration:
                probe = FirstCalibrate(pid)
                await probe.idle()
                try:
                    await _quiz_alone(browser, warm_link, args, Results(latencies={s: [] for s in QUIZ_STEPS}), probe,
                                      args.step_timeout)
                except Exception as exc:
                    run.calib_errors.append(f"calibration: {_describe(exc)}")
                run.calib.append(probe)
                await wait_server_idle(pid)
            await _concurrent_quiz(p, browser, link, args, pid, run)
            return run
        finally:
            await browser.close()


async def _concurrent_quiz(p, browser, link: str, args, pid: int, run: Run) -> None:
    """The class: ``args.sessions`` students, server CPU sampled and attributed to the steps in flight."""
    inflight: dict[int, str] = {}
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_server_cpu(pid, inflight, run.attributed, stop))
    me = os.getpid()
    c0, l0, (m0, _) = tree_cpu(pid), tree_cpu(me), machine_busy()
    log0 = log_size(args.server_log)
    t0 = time.monotonic()
    browsers = [browser] + [await p.chromium.launch(executable_path=CHROMIUM, args=LOADGEN_ARGS)
                            for _ in range(1, -(-args.sessions // max(args.per_browser, 1)))]
    try:
        exact = pid if args.sessions == 1 else None
        await asyncio.gather(*(quiz_student(i, browsers[i % len(browsers)], link, args, run.res, inflight,
                                            run.ended, run.cost, exact) for i in range(args.sessions)))
        stop.set()
        await sampler
        run.wall = time.monotonic() - t0
        run.server_cpu = tree_cpu(pid) - c0
        run.log_span = (log0, log_size(args.server_log))
        run.loadgen_cpu = (tree_cpu(me) - l0) - run.server_cpu
        run.machine_cpu = machine_busy()[0] - m0
    finally:
        for extra in browsers[1:]:
            await extra.close()


def quiz_table(run: Run) -> str:
    """Per step: n, median / p95 / max latency, server CPU s calibrated (alone) and under load (shared)."""
    first = run.calib[0].steps if run.calib else {}
    lines = ["| step (page) | n | median (s) | p95 (s) | max (s) | server CPU s/step, alone "
             "| server CPU s/step under load (shared) " + COST_HEAD, "|---|---:|---:|---:|---:|---:|---:|" + COST_RULE]
    for step in QUIZ_STEPS:
        v = np.asarray(run.res.latencies[step])
        stats = f"{np.median(v):.2f} | {np.percentile(v, 95):.2f} | {v.max():.2f}" if len(v) else "- | - | -"
        ended = run.ended.get(step, 0)
        load = _fmt(run.attributed.get(step, 0.0) / ended) if ended else "-"
        lines.append(f"| {step} ({QUIZ_PAGES[step]}) | {len(v)} | {stats} | "
                     f"{_fmt(first[step].cpu_rerun) if step in first else '-'} | {load} |" + cost_cells(run, step))
    if run.res.rounds:
        lines.append(f"| whole play | {run.res.rounds} | | | | | {_fmt(run.server_cpu / run.res.rounds)} | | | |")
    return "\n".join(lines + [cost_total(run)])


def quiz_main(args, bundle: Path, env: dict, work: Path) -> int:
    """``--flow quiz``: start a class round, serve, warm up, calibrate, then the class; the report."""
    state_url = f"sqlite:///{work / 'state.sqlite3'}"
    env = {**env, "ASAP_STATE_URL": state_url}
    link_bundle = bundle.name if args.mode == "hosted" else str(bundle)
    code, ids = start_class_round(state_url, bundle, link_bundle, args.quiz_images)
    procs: list = []
    with streamlit_server(env, args.server_log, procs=procs) as url:
        from asap_core.views import quiz as vq

        link = vq.round_link(f"{url}/quiz", link_bundle, vq.QuizSpec("all", "", args.quiz_images, QUIZ_SEED), code)
        warm_link = vq.quiz_link(f"{url}/quiz", link_bundle, vq.QuizSpec("all", "", args.quiz_images, QUIZ_SEED + 1))
        pid = procs[0].pid
        print(pin_processes(args.generator_cpus, pid), flush=True)
        print(f"server {url} ({args.mode} mode, pid {pid}); class round {code}: {args.sessions} students, one "
              f"every {args.ramp:g} s, {args.quiz_images} images each; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        run = asyncio.run(drive_quiz(link, warm_link, args, pid))
        rss = peak_rss_mb(pid)
    n_rec, want = recorded_answers(state_url, code), args.sessions * args.quiz_images
    if n_rec != want:
        run.res.errors.append(f"class round {code}: {n_rec} answers recorded, expected {want}")
    print(f"\nwarm-up play: {run.warm_wall:.1f} s wall, {run.warm_cpu:.1f} server CPU s"
          + (f" ({'; '.join(run.warm.errors)})" if run.warm and run.warm.errors else ""))
    print(f"{args.sessions} students, {run.wall:.0f} s: {run.res.rounds} plays completed, {n_rec} answers recorded "
          f"in round {code}, errors: {len(run.res.errors)}" + (f"; server peak RSS {rss:.0f} MB" if rss else ""))
    if run.wall > 0:
        print(f"CPU in the class phase: server {run.server_cpu:.1f} s = {run.server_cpu / run.wall:.2f} cores busy; "
              f"load generator {run.loadgen_cpu:.1f} s; whole machine {run.machine_cpu / run.wall:.2f} of "
              f"{os.cpu_count()} cores; load average now {os.getloadavg()[0]:.1f}")
    print(quiz_table(run))
    runs = server_runs(args.server_log, run.log_span)
    print("\nthe server's own runs in the class phase (its run log: wall seconds include waiting for the core):")
    print(runs_table(runs))
    for e in run.res.errors[:20] + run.calib_errors:
        print("  -", e)
    if args.json:
        args.json.write_text(json.dumps({"flow": "quiz", "sessions": args.sessions, "ramp": args.ramp,
                                         "quiz_images": args.quiz_images, "errors": run.res.errors,
                                         "latencies": run.res.latencies, "wall_s": run.wall,
                                         "server_cpu_s": run.server_cpu, "answers_recorded": n_rec,
                                         "server_runs": runs,
                                         "server_cpu_by_step_shared_s": run.attributed, "steps_ended": run.ended,
                                         "received_bytes_by_step": run.cost.received,
                                         "server_cpu_by_step_exact_s": run.cost.exact_cpu,
                                         "calibration": [{s: vars(c) for s, c in pr.steps.items()}
                                                         for pr in run.calib]},
                                        indent=1))
    return 1 if run.res.errors or run.calib_errors else 0


# ------------------------------------------------------------------------------------------ report
def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


# the step's cost apart from its latency (never added to it): bytes the browser received, server CPU
COST_HEAD = "| KB received/step | server CPU s/step, run total / steps | server CPU s/step, exact (1 session) |"
COST_RULE = "---:|---:|---:|"


def cost_cells(run: Run, step: str) -> str:
    """The ``COST_HEAD`` cells of one step kind: mean KB the pages received during it (websocket frames and
    HTTP bodies), the concurrent phase's server CPU over all steps ended (the same figure on every row), and
    with one session the mean server CPU from its start to its end."""
    ended = run.ended.get(step, 0)
    if not ended:
        return " - | - | - |"
    steps = sum(n for s, n in run.ended.items() if s != BETWEEN)
    exact = run.cost.exact_cpu.get(step)
    return (f" {run.cost.received.get(step, 0) / 1024 / ended:.1f} | {_fmt(run.server_cpu / steps)} | "
            f"{_fmt(None if exact is None else exact / ended, 3)} |")


def cost_total(run: Run) -> str:
    """One line under the table: received bytes and server CPU of the whole concurrent phase."""
    steps = sum(run.ended.values())
    return (f"(concurrent phase: {steps} steps ended, {sum(run.cost.received.values()) / 1024:.0f} KB received by "
            f"the pages, {run.server_cpu:.2f} server CPU s; shared and run-total CPU columns are approximate per "
            f"step kind, the exact column is measured only with --sessions 1)")


#: the server's run log (``ASAP_LOG_RUNS=1``): a page's run or a fragment's own rerun, with its times
RUN_LINE = re.compile(r"asap_explorer\.runs run (?P<label>.+) (?P<ended>\w+): (?P<wall>[\d.]+) s wall, "
                      r"(?P<cpu>[\d.]+) s CPU$")
#: which step of a round each logged run serves (the quiz's and others are listed by their label)
RUN_STEPS = {"page overview": "overview (and the rerun closing the guide)",
             "fragment overview._map_and_selection": "select_cell", "page images": "image_grid",
             "fragment images._grid_and_picks": "pick_images", "page attention": "attention_maps",
             "page quiz": "open_quiz", "fragment quiz.play_area": "answer, next"}
COMPLETE = ("done", "StopException")  # a run that drew its page (st.stop ends one early on purpose)


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def server_runs(log: Path, span: tuple[int, int]) -> dict[str, dict[str, list[float]]]:
    """The runs the server logged in ``span`` (bytes of ``log``), by label: wall and CPU seconds of the runs
    that completed, and how many were cut short for another run (a page switch, a rerun)."""
    out: dict[str, dict[str, list[float]]] = {}
    if not log.exists() or span[1] <= span[0]:
        return out
    with log.open("rb") as f:
        f.seek(span[0])
        text = f.read(span[1] - span[0]).decode("utf-8", "replace")
    for line in text.splitlines():
        m = RUN_LINE.search(line)
        if not m:
            continue
        runs = out.setdefault(m["label"], {"wall": [], "cpu": [], "cut": []})
        if m["ended"] in COMPLETE:
            runs["wall"].append(float(m["wall"]))
            runs["cpu"].append(float(m["cpu"]))
        else:
            runs["cut"].append(float(m["wall"]))
    return out


def runs_table(runs: dict[str, dict[str, list[float]]]) -> str:
    """Per logged label: the step it serves, completed runs, wall median / p95 / max, CPU median (the script's
    thread), and the runs ended by a rerun (a page switch; a click whose run asks for one more to draw)."""
    if not runs:
        return "(no run log: the server ran without ASAP_LOG_RUNS=1)"
    lines = ["| server run (label) | step | n | wall median / p95 / max (s) | CPU median (s) "
             "| ended by a rerun |",
             "|---|---|---:|---|---:|---:|"]
    for label, r in sorted(runs.items(), key=lambda kv: list(RUN_STEPS).index(kv[0]) if kv[0] in RUN_STEPS else 99):
        w = np.asarray(r["wall"])
        stats = (f"{np.median(w):.2f} / {np.percentile(w, 95):.2f} / {w.max():.2f}" if len(w) else "-")
        cpu = f"{np.median(r['cpu']):.3f}" if r["cpu"] else "-"
        lines.append(f"| {label} | {RUN_STEPS.get(label, '')} | {len(w)} | {stats} | {cpu} | {len(r['cut'])} |")
    return "\n".join(lines)


def table(run: Run) -> str:
    res = run.res
    first = run.calib[0].steps if run.calib else {}
    again = run.calib[1].steps if len(run.calib) > 1 else {}
    lines = ["| step (page) | n | median (s) | p95 (s) | max (s) | server response, median / p95 (s) "
             "| server CPU s/rerun, calibrated (first / second visit) "
             "| server CPU s/step under load (shared) " + COST_HEAD,
             "|---|---:|---:|---:|---:|---:|---:|---:|" + COST_RULE]
    for step in STEPS:
        v = np.asarray(res.latencies[step])
        cal = _fmt(first[step].cpu_rerun) if step in first else "-"
        if step in again:
            cal += f" / {_fmt(again[step].cpu_rerun)}"
        ended = run.ended.get(step, 0)
        load = _fmt(run.attributed.get(step, 0.0) / ended) if ended else "-"
        stats = (f"{np.median(v):.2f} | {np.percentile(v, 95):.2f} | {v.max():.2f}" if len(v) else "- | - | -")
        r = np.asarray(res.server[step])
        resp = f"{np.median(r):.2f} / {np.percentile(r, 95):.2f}" if len(r) else "-"
        lines.append(f"| {step} ({PAGES[step]}) | {len(v)} | {stats} | {resp} | {cal} | {load} |"
                     + cost_cells(run, step))
    total = np.sum([np.asarray(res.latencies[s]) for s in STEPS], axis=0) if res.rounds else np.zeros(0)
    if len(total):
        cal = " / ".join(_fmt(sum(c.cpu_rerun for c in steps.values())) for steps in (first, again)
                         if len(steps) == len(STEPS)) or "-"
        lines.append(f"| whole round | {len(total)} | {np.median(total):.2f} | {np.percentile(total, 95):.2f} "
                     f"| {total.max():.2f} | | {cal} | {_fmt(run.server_cpu / res.rounds)} | | | |")
        lines.append(f"| (between steps) | | | | | | | {_fmt(run.attributed.get(BETWEEN, 0.0), 1)} s in all "
                     f"| {_fmt(run.cost.received.get(BETWEEN, 0) / 1024, 0)} KB in all | | |")
    return "\n".join(lines + [cost_total(run)])


def calibration_table(run: Run) -> str:
    """Per step, the calibration's latency and server CPU seconds, first visit and second visit side by side;
    the round's sum below (each step measured on an idle server)."""
    lines = ["| step (page) | latency alone (s), first / second | server CPU s to visible, first / second "
             "| server CPU s whole rerun, first / second |", "|---|---:|---:|---:|"]
    probes = (run.calib + [Calibrate(0)] * 2)[:2]

    def pair(step: str, attr: str) -> str:
        return " / ".join(_fmt(getattr(pr.steps[step], attr)) if step in pr.steps else "-" for pr in probes)

    for step in STEPS:
        lines.append(f"| {step} ({PAGES[step]}) | {pair(step, 'latency')} | {pair(step, 'cpu_visible')} "
                     f"| {pair(step, 'cpu_rerun')} |")
    sums = [_fmt(sum(c.cpu_rerun for c in pr.steps.values())) if len(pr.steps) == len(STEPS) else "-"
            for pr in probes]
    lines.append(f"| **round** | | | **{' / '.join(sums)}** |")
    return "\n".join(lines)


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a running process, MB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: build the demo bundle in --work)")
    ap.add_argument("--flow", choices=["explore", "quiz"], default="explore",
                    help="explore: the overview -> grid -> attention rounds; quiz: a class playing one quiz link")
    ap.add_argument("--quiz-images", type=int, default=10, help="--flow quiz: images in the quiz")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long sessions start new rounds")
    ap.add_argument("--ramp", type=float, default=2.0,
                    help="seconds between two sessions' arrivals (0: all at once)")
    ap.add_argument("--per-browser", type=int, default=4,
                    help="sessions per Chromium process (each process has one UI thread for all its contexts)")
    ap.add_argument("--step-timeout", type=float, default=120.0, help="seconds one step may take")
    ap.add_argument("--warmup-timeout", type=float, default=300.0,
                    help="seconds one step of the warm-up round may take (slower: reported, not an error)")
    ap.add_argument("--mode", choices=["hosted", "local"], default="hosted")
    ap.add_argument("--grid", type=int, default=6)
    ap.add_argument("--work", type=Path, help="work folder, reused between runs: the demo bundle is built "
                                              "once (default: a temporary one, removed at the end)")
    ap.add_argument("--maps", choices=["fresh", "keep"],
                    help="fresh: delete the bundle's cached relevance maps first, so they are computed on "
                         "demand (default for the demo bundle); keep: leave them (default for --bundle)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--shots", type=Path, help="screenshots of failed rounds go here")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--no-calibration", action="store_true", help="skip the one-session server CPU calibration")
    ap.add_argument("--generator-cpus", metavar="LIST",
                    help="pin the load generator (this script, its playwright driver and Chromium) to these CPUs, "
                         "e.g. 0 or 0-1,4, and the server to the others (skipped, with a note, when either would "
                         "get none)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (Debian's chromium) and the playwright package", file=sys.stderr)
        return 2
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)

    tmp = None if args.work else Path(tempfile.mkdtemp(prefix="asap-load-"))
    work = (args.work or tmp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        bundle = (args.bundle.expanduser().resolve() if args.bundle else build_demo_bundle(work))
        env = {"ASAP_CACHE_DIR": str(work / "server-cache"), "ASAP_RELEVANCE_BUDGET": RELEVANCE_BUDGET,
               "ASAP_LOG_RUNS": "1"}
        args.server_log = work / "server.log"
        if args.mode == "hosted":
            env.update(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(bundle.parent), ASAP_BUNDLE=bundle.name)
        else:
            env.update(ASAP_BUNDLE=str(bundle), ASAP_HOSTED="0")
        if args.flow == "quiz":
            if args.maps == "fresh":
                print(f"maps: {clear_maps(bundle)} cached map store(s) deleted", flush=True)
            return quiz_main(args, bundle, env, work)
        plan = cell_plan(bundle, args.grid)
        if len(plan) < 2:
            print(f"{bundle} has fewer than 2 cells with 5+ images on a {args.grid}x{args.grid} grid", file=sys.stderr)
            return 2
        maps = args.maps or ("keep" if args.bundle else "fresh")
        if maps == "fresh":
            print(f"maps: {clear_maps(bundle)} cached map store(s) of {bundle.name} deleted, maps computed on demand",
                  flush=True)
        procs: list = []
        t_start = time.monotonic()
        with streamlit_server(env, args.server_log, procs=procs) as url:
            pid = procs[0].pid
            print(pin_processes(args.generator_cpus, pid), flush=True)
            print(f"server {url} ({args.mode} mode, pid {pid}, started in {time.monotonic() - t_start:.1f} s) on "
                  f"{bundle}; {args.sessions} sessions for {args.seconds:.0f} s; {len(plan)} cells with 5+ images "
                  f"on a {args.grid}x{args.grid} grid; heavy slots {os.environ.get('ASAP_HEAVY_SLOTS', '2')}; "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
            run = asyncio.run(drive(url, args, plan, pid))
            rss = peak_rss_mb(pid)
        res, warm = run.res, run.warm
        print()
        print(f"server start: {run.start_cpu:.1f} server CPU s until the first request")
        if warm is not None:
            if warm.rounds:
                steps = ", ".join(f"{s} {warm.latencies[s][0]:.2f} s" for s in STEPS)
            else:
                steps = "; ".join(warm.warnings + warm.errors)
            print(f"warm-up round (1 session, {run.warm_wall:.1f} s wall, {run.warm_cpu:.1f} server CPU s): {steps}")
        if run.calib:
            print(f"\ncalibration (two sessions of one browser, one after the other, each step on an idle server, "
                  f"one idle visitor connected; cell "
                  f"{(plan[-2] if len(plan) > 2 else plan[-1])[0]}):")
            print(calibration_table(run))
        for e in run.calib_errors:
            print("  -", e)
        cores = os.cpu_count() or 1
        print(f"\n{args.sessions} sessions, {run.wall:.0f} s: {res.rounds} rounds completed, "
              f"{res.maps_shown} images' maps shown, {res.slot_waits} rounds waited for a heavy slot, "
              f"errors: {len(res.errors)}" + (f"; server peak RSS {rss:.0f} MB" if rss else ""))
        if run.wall > 0:
            print(f"CPU in the concurrent phase: server {run.server_cpu:.1f} s = {run.server_cpu / run.wall:.2f} "
                  f"cores busy; load generator (script + Chromium) {run.loadgen_cpu:.1f} s = "
                  f"{run.loadgen_cpu / run.wall:.2f} cores; whole machine {run.machine_cpu / run.wall:.2f} of "
                  f"{cores} cores (the rest: other processes)")
        print(table(run))
        runs = server_runs(args.server_log, run.log_span)
        print("\nthe server's own runs in the concurrent phase (its run log: wall seconds include waiting for the "
              "core and the lock of a shared cache):")
        print(runs_table(runs))
        for e in res.errors[:20]:
            print("  -", e)
        if args.json:
            args.json.write_text(json.dumps({
                "sessions": args.sessions, "seconds": args.seconds, "mode": args.mode, "grid": args.grid,
                "bundle": str(bundle), "maps": maps, "wall_s": run.wall, "rounds": res.rounds,
                "errors": res.errors, "latencies": res.latencies, "server_response_s": res.server,
                "server_runs": runs,
                "server_peak_rss_mb": rss,
                "slot_waits": res.slot_waits, "cpus": cores,
                "server_cpu_s": run.server_cpu, "loadgen_cpu_s": run.loadgen_cpu, "machine_cpu_s": run.machine_cpu,
                "server_cpu_by_step_shared_s": run.attributed, "steps_ended": run.ended,
                "received_bytes_by_step": run.cost.received, "server_cpu_by_step_exact_s": run.cost.exact_cpu,
                "server_start_cpu_s": run.start_cpu,
                "warmup": None if warm is None else {"latencies": warm.latencies, "errors": warm.errors,
                                                     "warnings": warm.warnings, "wall_s": run.warm_wall,
                                                     "server_cpu_s": run.warm_cpu},
                "calibration": [{s: vars(c) for s, c in probe.steps.items()} for probe in run.calib],
                "calibration_errors": run.calib_errors,
            }, indent=1))
        failed = res.errors or run.calib_errors or (warm is not None and warm.errors)
        return 1 if failed else 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
