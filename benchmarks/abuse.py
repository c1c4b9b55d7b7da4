"""Abuse benchmark of the hosted explorer (can one visitor exhaust or break it?): replays the attack
catalogue against ``serve`` on 127.0.0.1.

    HF_HUB_OFFLINE=1 python benchmarks/abuse.py [--attacks NAME,NAME|GROUP] [--out abuse.json] [--keep]
                                                 [--work DIR] [--list]

Builds, in a temporary folder (``--work`` reuses one: the demo bundle is built once there), a bundle root with
the demo bundle (``asap_core/demo_data`` analysed with a random CLIP, no download) and crafted files: pixel
bombs in every format Pillow opens (written by small functions below, most without ever holding the pixels:
PNG and TIFF rows of zeros streamed through zlib, a hand-written lossless WebP whose five prefix codes each
have one symbol, an RLE8 BMP), zips of bombs, of 9000² PNGs, of zero-filled 1 MB members and of traversal
names, and bad bundles (``bundle.json`` of 100,000 nested arrays, NaN cell coordinates, 12000² / 20000² JPEG
thumbnails, Markdown in file and dimension names) that are moved into the bundle root only for their attack.

Then ``python -m asap_core serve`` with ``ASAP_HOSTED=1`` on 127.0.0.1 and a free port, its own
``ASAP_CACHE_DIR`` and ``ASAP_STATE_URL`` (an SQLite file); the spoofing and eviction attacks use a second
configuration (``ASAP_TRUSTED_PROXIES=1``, a relevance budget of 3), started only for them and restarted
once in the middle of the spoofing attack. Headless Chromium (Debian's ``/usr/bin/chromium``) plays the
visitors; every request leaving 127.0.0.1 is recorded and aborted.

Per attack: the server's RSS growth (VmRSS of the server's process tree from ``/proc``, sampled at 20 Hz,
and its VmHWM; peak over the pre-attack value), the growth of ``ASAP_CACHE_DIR`` on disk, the visitor's
message (the first error / warning / exception block, else what the page showed), and whether another
visitor was affected: a clean session (its own client address) opens the overview while the attack runs
and, for upload attacks, analyses a small upload of its own; any error block, "Something went wrong" or a
timeout counts. Verdict "ok" when the RSS growth is under 1 GB (1.5 GB for three uploads at once), no one
else was affected and the attack's own check holds (a refusal in words for a bomb over
``ASAP_MAX_UPLOAD_PIXELS``, no more maps than the budget, the first visitor's upload still opens, no link
or image to an outside host, no error id in the server log for bad query values, ...).

A guard kills the server when its RSS passes 8 GB (the attack then fails and the server is restarted).
Every wait has a timeout; attacks run one at a time, except the deliberate three-at-once. Prints one
Markdown table and writes it with the details to ``--out`` (JSON); exit status 1 when an attack failed.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MB = 1024 * 1024
OVER = {"png_rgba": (13000, 13000), "png_grey": (13300, 13300), "webp": (16383, 10900), "tiff": (13000, 13000),
        "gif": (13000, 13000), "bmp": (13000, 13000), "jpeg": (12000, 12000)}  # over 64 Mpx, under 2x Pillow's
UNDER = (8000, 7990)  # 63.9 Mpx: just under ASAP_MAX_UPLOAD_PIXELS' default of 64,000,000
# lossless WebP is admitted up to imageio.WEBP_BUDGET_SHARE of that limit (Pillow's WebP decoder holds several
# full-size copies): 5650 x 5650 = 31.9 Mpx is just under the WebP share of 64 Mpx
UNDER_KIND = {k: ((5650, 5650) if k == "webp" else UNDER) for k in OVER}
SUFFIX = {"png_rgba": "png", "png_grey": "png", "webp": "webp", "tiff": "tif", "gif": "gif", "bmp": "bmp",
          "jpeg": "jpg"}


# ------------------------------------------------------------------------------------------ crafted files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w: int, h: int, mode: str = "L", mark: int = 0) -> bytes:
    """A PNG of ``w`` x ``h`` zeros (``mode`` "L": 8-bit grey, "RGBA": 8-bit RGBA), rows streamed through zlib
    (never held whole); ``mark`` is the first byte of the first row, so that marked files differ."""
    colour, channels = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}[mode]
    row = bytes(1 + w * channels)
    first = bytearray(row)
    if w:
        first[1] = mark & 0xFF
    comp = zlib.compressobj(9)
    parts = [comp.compress(bytes(first))]
    parts += [comp.compress(row) for _ in range(h - 1)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


class _Bits:
    """Bits written least significant first (the VP8L bit order)."""

    def __init__(self) -> None:
        self.value, self.n = 0, 0

    def put(self, value: int, nbits: int) -> None:
        self.value |= (value & ((1 << nbits) - 1)) << self.n
        self.n += nbits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.n + 7) // 8, "little")


def webp_bomb(w: int, h: int) -> bytes:
    """A lossless WebP (VP8L) of ``w`` x ``h`` (each at most 16384) transparent black pixels, a few dozen
    bytes: no transform, no colour cache, and five prefix codes of one symbol each (zero bits per pixel)."""
    bits = _Bits()
    bits.put(0x2F, 8)                                   # VP8L signature
    bits.put(w - 1, 14), bits.put(h - 1, 14), bits.put(1, 1), bits.put(0, 3)  # size, alpha used, version 0
    bits.put(0, 1), bits.put(0, 1), bits.put(0, 1)      # no transform, no colour cache, no meta prefix codes
    for _ in range(5):                                  # green, red, blue, alpha, distance
        bits.put(1, 1), bits.put(0, 1), bits.put(0, 1), bits.put(0, 1)  # simple code, 1 symbol, 1-bit symbol 0
    payload = bits.bytes()
    payload += b"\0" * (len(payload) % 2)
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def tiff_bomb(w: int, h: int, rows_per_strip: int = 256) -> bytes:
    """A little-endian TIFF of ``w`` x ``h`` 8-bit grey zeros in Deflate strips (one compressed strip repeated)."""
    n_strips = -(-h // rows_per_strip)
    full = zlib.compress(bytes(w * rows_per_strip), 9)
    last_rows = h - (n_strips - 1) * rows_per_strip
    last = zlib.compress(bytes(w * last_rows), 9)
    strips = [full] * (n_strips - 1) + [last]
    data_at = 8
    offsets, pos = [], data_at
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    arrays_at = pos
    counts_at = arrays_at + 4 * n_strips
    ifd_at = counts_at + 4 * n_strips
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, n_strips, arrays_at if n_strips > 1 else offsets[0]), (277, 3, 1, 1),
               (278, 4, 1, rows_per_strip), (279, 4, n_strips, counts_at if n_strips > 1 else len(strips[0]))]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value) if kind == 4 or count > 1 else \
            struct.pack("<HHIHH", tag, kind, count, value, 0)
    ifd += struct.pack("<I", 0)
    body = b"".join(strips) + struct.pack(f"<{n_strips}I", *offsets) + \
        struct.pack(f"<{n_strips}I", *(len(s) for s in strips))
    return b"II*\0" + struct.pack("<I", ifd_at) + body + ifd


def bmp_bomb(w: int, h: int) -> bytes:
    """An 8-bit palette BMP of ``w`` x ``h`` zeros, RLE8-compressed (runs of 255, end of line, end of bitmap)."""
    row = b"\xff\x00" * (w // 255) + (bytes([w % 255, 0]) if w % 255 else b"") + b"\x00\x00"
    pixels = row * h + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + info + palette + pixels


def pillow_bomb(w: int, h: int, fmt: str, mode: str = "L", **save) -> bytes:
    """A ``w`` x ``h`` image of zeros encoded by Pillow (GIF, JPEG: formats without a cheap hand encoding;
    holds ``w * h`` bytes per channel while it encodes)."""
    from PIL import Image

    im = Image.new(mode, (w, h))
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    del im
    return buf.getvalue()


def image_bomb(kind: str, w: int, h: int) -> bytes:
    """The file of format ``kind`` (a key of ``OVER``) at ``w`` x ``h``."""
    if kind in ("png_rgba", "png_grey"):
        return png_bomb(w, h, "RGBA" if kind == "png_rgba" else "L")
    return {"webp": webp_bomb, "tiff": tiff_bomb, "bmp": bmp_bomb,
            "gif": lambda a, b: pillow_bomb(a, b, "GIF", "P"),
            "jpeg": lambda a, b: pillow_bomb(a, b, "JPEG", "RGB", quality=50)}[kind](w, h)


def small_png(seed: int, side: int = 48) -> bytes:
    """A small noisy RGB PNG (an ordinary upload), different for each ``seed``."""
    import numpy as np
    from PIL import Image

    px = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip of ``members`` (name -> bytes), names written as given (``..`` and ``/`` included)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def zip_webp_bombs(n: int = 4) -> bytes:
    """``n`` 16383 x 10900 lossless WebPs, half under real/, half under fake/."""
    w, h = OVER["webp"]
    return zip_bytes({f"set/{'real' if i % 2 else 'fake'}/bomb{i}.webp": webp_bomb(w, h - i) for i in range(n)})


def zip_grey_pngs(n: int = 40, side: int = 9000) -> bytes:
    """``n`` distinct grey ``side``² PNGs of zeros (81 Mpx each at 9000), half real, half fake."""
    return zip_bytes({f"set/{'real' if i % 2 else 'fake'}/g{i:02d}.png": png_bomb(side, side, "L", mark=i + 1)
                      for i in range(n)})


def zip_zero_members(n: int = 40, size: int = 1_000_000) -> bytes:
    """``n`` members named ``.png`` of ``size`` zero bytes each (under 1 MiB: the size where ratio checks start)."""
    return zip_bytes({f"set/{'real' if i % 2 else 'fake'}/z{i:02d}.png": bytes(size) for i in range(n)})


TRAVERSAL_NAMES = ("../../abuse-escape-1.png", "/tmp/abuse-escape-2.png", "set/real/../../../abuse-escape-3.png",
                   "..\\..\\abuse-escape-4.png", "set/real/ok.png", "set/fake/ok2.png")


def zip_traversal() -> bytes:
    """Members whose names climb out of the upload folder (``..``, absolute, backslashes) and two good ones."""
    return zip_bytes({name: small_png(i) for i, name in enumerate(TRAVERSAL_NAMES)})


def zip_plain(n: int = 3, seed: int = 0) -> bytes:
    """``n`` small unlabelled PNGs in one folder (placed with the open bundle's detector: cheap to analyse)."""
    return zip_bytes({f"mine/p{i}.png": small_png(seed * 100 + i) for i in range(n)})


def nested_json(depth: int = 100_000) -> str:
    """``depth`` nested JSON arrays: valid JSON that Python's parser cannot read without a RecursionError."""
    return "[" * depth + "]" * depth


# ------------------------------------------------------------------------------------------ crafted bundles
MD_NAME = "![i](http:198.51.100.7) [x](https:example.invalid) **b** :red[r] $x$"
DIM_MD_NAMES = ("![i](http:198.51.100.7) **b** :red[r]", "[x](https:example.invalid) $x$")  # <= 40 characters
OUTSIDE_HOSTS = ("198.51.100.7", "example.invalid")  # the hosts the Markdown names point at


def copy_bundle(src: Path, dest: Path) -> Path:
    """``src`` copied to ``dest`` without its cache (an empty ``cache/``)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    (dest / "cache").mkdir()
    return dest


def nested_json_bundle(demo: Path, dest: Path, depth: int = 100_000) -> Path:
    """A copy of ``demo`` whose ``bundle.json`` is ``depth`` nested arrays."""
    copy_bundle(demo, dest)
    (dest / "bundle.json").write_text(nested_json(depth))
    return dest


def nan_cells_bundle(demo: Path, dest: Path) -> Path:
    """A copy of ``demo`` whose ``cells.parquet`` has NaN in every ``x``."""
    import pandas as pd

    copy_bundle(demo, dest)
    cells = pd.read_parquet(dest / "cells.parquet")
    cells["x"] = float("nan")
    cells.to_parquet(dest / "cells.parquet", index=False)
    return dest


def huge_thumb_ids(images, n_cells: int = 1) -> list[str]:
    """Ids of the images in the ``n_cells`` largest cells (biggest first)."""
    top = images["cell"].value_counts().index[:n_cells]
    return images[images["cell"].isin(top)]["image_id"].astype(str).tolist()


def huge_thumbs_bundle(demo: Path, dest: Path, side: int = 12000, big_side: int = 20000) -> tuple[Path, list[str]]:
    """A copy of ``demo`` whose thumbnails in its largest cell are ``side``² JPEGs (the first one
    ``big_side``²); returns (path, those ids)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from asap_core.storage.thumbs import write_thumbs

    copy_bundle(demo, dest)
    images = pd.read_parquet(dest / "images.parquet")
    old = pq.read_table(dest / "thumbs.parquet").to_pydict()
    thumbs = dict(zip(old["image_id"], old["jpeg"]))
    ids = huge_thumb_ids(images)
    huge = pillow_bomb(side, side, "JPEG", "L", quality=50)
    thumbs.update({i: huge for i in ids[1:]})
    thumbs[ids[0]] = pillow_bomb(big_side, big_side, "JPEG", "L", quality=50)
    (dest / "thumbs.parquet").unlink()
    write_thumbs(dest / "thumbs.parquet", images, lambda chunk: [thumbs.get(i) for i in chunk])
    return dest, ids


def markdown_bundle(demo: Path, dest: Path, n_files: int = 12) -> tuple[Path, list[str]]:
    """A copy of ``demo`` whose first ``n_files`` file names and all dimension names carry ``MD_NAME``
    (links and an image to outside hosts, bold, colour, maths); returns (path, the renamed images' ids)."""
    import pandas as pd

    from asap_core.storage.bundle import set_dimension_name
    from asap_core.storage.schema import N_DIMS

    copy_bundle(demo, dest)
    images = pd.read_parquet(dest / "images.parquet")
    for k in range(min(n_files, len(images))):
        rel = str(images.at[k, "relpath"])
        folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
        images.at[k, "relpath"] = f"{folder}/{MD_NAME} {k}.jpg".lstrip("/")
    images.to_parquet(dest / "images.parquet", index=False)
    for d in range(N_DIMS):
        set_dimension_name(dest, d, DIM_MD_NAMES[d % 2])
    return dest, images["image_id"].astype(str).tolist()[:n_files]


# ------------------------------------------------------------------------------------------ the server
GUARD_MB = 8192  # the server is killed when its process tree passes this
SAMPLE_S = 0.05  # 20 Hz
START_TIMEOUT_S = 120.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def status_mb(pid: int, key: str) -> float:
    """``key`` (VmRSS, VmHWM) of ``/proc/PID/status`` in MB; 0.0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MB."""
    return sum(status_mb(p, "VmRSS") for p in _tree(pid))


def dir_mb(path: Path) -> float:
    """Bytes of the files under ``path`` (allocated blocks: sparse files count what they hold), MB."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total / MB


class RssSampler(threading.Thread):
    """Samples the server tree's RSS every ``SAMPLE_S`` until ``stop()``; kills the tree past ``GUARD_MB``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.tripped = pid, 0.0, False
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = tree_rss_mb(self.pid)
            self.peak = max(self.peak, rss)
            if rss > GUARD_MB and not self.tripped:
                self.tripped = True
                for p in _tree(self.pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
            self._halt.wait(SAMPLE_S)

    def stop(self) -> float:
        self._halt.set()
        self.join(5)
        return self.peak


@dataclass
class Server:
    """``python -m asap_core serve`` on 127.0.0.1 with ``env`` added (hosted mode); ``start`` / ``stop``."""

    name: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    url: str = ""

    def start(self) -> str:
        from browser_helpers import free_port

        from asap_core.serving import HEALTH_PATH

        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "asap_core", "serve", "--port", str(port),
                                          "--address", "127.0.0.1"], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(self.url + HEALTH_PATH, timeout=2).read() == b"ok":
                    return self.url
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server {self.name} did not start: {self.log.read_text()[-1500:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def log_count(self, pattern: str) -> int:
        """Lines of the server log that match ``pattern``."""
        rx = re.compile(pattern)
        try:
            return sum(1 for line in self.log.read_text(errors="replace").splitlines() if rx.search(line))
        except OSError:
            return 0


# ------------------------------------------------------------------------------------------ visitors
ALERTS = "[data-testid='stException'], [data-testid='stAlertContentError'], [data-testid='stAlertContentWarning']"
ERRORS = "[data-testid='stException'], [data-testid='stAlertContentError']"
NOTICE_RX = "/randomly initialised|close to chance|unlike every image/i"  # notices, not messages: the demo's
# on every page, and the single image page's note that an upload is far from every image of the bundle
ALERT_EXPR = (f"(document.querySelector({ERRORS!r}) || "
              f"[...document.querySelectorAll(\"[data-testid='stAlertContentWarning']\")]"
              f".some(e => !{NOTICE_RX}.test(e.innerText)))")
IDLE_EXPR = "!document.querySelector(\"[data-testid='stStatusWidget'] button\")"
OVERVIEW_DONE = f"(document.querySelector('.vega-embed svg') || {ALERT_EXPR})"
METRIC_DONE = f"(document.querySelector(\"[data-testid='stMetric']\") || {ALERT_EXPR})"
SIDEBAR_DONE = "document.querySelector(\"[data-testid='stSidebar']\")"
# the first error block's text, else the first warning's that is not a notice every page of the demo shows
MESSAGE_JS = f"""() => {{
  const txt = e => e.innerText.replace(/\\s+/g, ' ').trim();
  const err = document.querySelector({ERRORS!r});
  if (err) return txt(err);
  const warn = [...document.querySelectorAll("[data-testid='stAlertContentWarning']")].map(txt)
    .filter(t => !{NOTICE_RX}.test(t));
  if (warn.length) return warn[0];
  const m = document.querySelector("[data-testid='stMetric']");
  return m ? txt(m) : ''; }}"""
BROKEN_JS = f"""() => {{ const t = [...document.querySelectorAll({ERRORS!r})].map(e => e.innerText);
  return t.length ? t[0].replace(/\\s+/g, ' ').slice(0, 160) : ''; }}"""
# links and images of the page whose address names one of OUTSIDE_HOSTS
OUTSIDE_JS = """hosts => [...document.querySelectorAll('a[href], img[src], [style*="url("]')]
  .map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('style') || '')
  .filter(u => hosts.some(h => u.includes(h)))"""
LEAKS = re.compile(r"Traceback|File \"|\b[A-Z][A-Za-z]*(?:Error|Exception)\b|ASAP_[A-Z_]+|"
                   r"(?<![\w.])/(?:tmp|root|home|srv|usr|etc|var|work|opt|proc|dev)(?:/|\b)")
CRASH = "Something went wrong"
UPLOAD_TIMEOUT_S = 240.0
CLEAN_TIMEOUT_S = 180.0


@dataclass
class Outcome:
    """What the attacking visitor saw and whether the attack's own check held."""

    message: str
    ok: bool
    note: str = ""
    extra: dict = field(default_factory=dict)


class Run:
    """The browser, the servers and the work folder shared by the attacks."""

    def __init__(self, browser, work: Path, servers: dict[str, Server], roots: dict[str, Path]) -> None:
        self.browser, self.work, self.servers, self.roots = browser, work, servers, roots
        self.current: Server | None = None
        self.outside: list[str] = []
        self._n = 0

    @property
    def url(self) -> str:
        return self.current.url

    async def use(self, name: str) -> Server:
        """The server of configuration ``name``, started and warmed up by one visitor who analyses a small
        upload (model load and imports are not counted against the first attack); any other one stopped."""
        for other in self.servers.values():
            if other.name != name and other.alive():
                other.stop()
        self.current = self.servers[name]
        if not self.current.alive():
            print(f"  starting server {name} ...", flush=True)
            self.current.start()
            await clean_visit(self, upload=True, landing=False)
        return self.current

    def restart(self) -> None:
        self.current.stop()
        self.current.start()

    def next_client(self, net: str = "203.0.113") -> str:
        """A new made-up client address (documentation ranges)."""
        self._n += 1
        return f"{net}.{self._n % 250 + 1}" if net.count(".") == 2 else f"{net}.{self._n // 250}.{self._n % 250 + 1}"

    async def page(self, forwarded: str | None = None):
        """(context, page) of a new browser session with ``X-Forwarded-For: forwarded`` (default: a new client);
        requests to any host but 127.0.0.1 are recorded and aborted."""
        ctx = await self.browser.new_context(viewport={"width": 1400, "height": 1000},
                                             extra_http_headers={"X-Forwarded-For": forwarded or self.next_client()})

        async def route(r):
            if r.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
                await r.continue_()
            else:
                self.outside.append(r.request.url)
                await r.abort()

        await ctx.route("**/*", route)
        page = await ctx.new_page()
        page.set_default_timeout(60000)
        return ctx, page


async def settle(page, done_expr: str, timeout_s: float) -> bool:
    """Wait until the app is idle and ``done_expr`` (JavaScript) holds; False after ``timeout_s``."""
    from playwright.async_api import TimeoutError as PWTimeout

    await page.wait_for_timeout(1200)
    try:
        await page.wait_for_function(f"() => {IDLE_EXPR} && {done_expr}", timeout=timeout_s * 1000, polling=250)
        return True
    except PWTimeout:
        return False


async def dismiss(page) -> None:
    """Close a new session's "How to read this" dialog when it is open."""
    try:
        if await page.get_by_role("dialog").count():
            await page.get_by_role("button", name="Got it").click(timeout=10000)
            await page.get_by_role("dialog").wait_for(state="detached", timeout=10000)
    except Exception:
        pass


def payload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


async def message(page) -> str:
    """The visitor's message: the first error block, else a warning, else the metric shown."""
    try:
        return (await page.evaluate(MESSAGE_JS))[:300]
    except Exception as exc:
        return f"(page unreadable: {type(exc).__name__})"


async def upload_single(run: Run, page, name: str, data: bytes, timeout_s: float = UPLOAD_TIMEOUT_S) -> str:
    """Upload ``data`` as ``name`` on the Single image page; the visitor's message (p_fake when analysed)."""
    await page.goto(f"{run.url}/single?bundle=demo")
    await page.get_by_text("No image uploaded yet").wait_for(timeout=120000)
    await page.locator("[data-testid='stMain'] input[type=file]").set_input_files(payload(name, data))
    if not await settle(page, METRIC_DONE, timeout_s):
        return f"no answer within {timeout_s:.0f} s"
    return await message(page)


async def byo_click(run: Run, page, name: str, data: bytes) -> None:
    """Open the overview, put ``data`` into "Bring your own images" and click "Analyse my images"."""
    await page.goto(f"{run.url}/?bundle=demo")
    await settle(page, OVERVIEW_DONE, 120)
    await dismiss(page)
    await page.get_by_text("Bring your own images").click()
    await page.locator("[data-testid='stSidebar'] input[type=file]").set_input_files(payload(name, data))
    await page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => "
                                 "b.innerText.includes('Analyse my images') && !b.disabled)", timeout=60000)
    await page.get_by_role("button", name="Analyse my images").click()


async def upload_byo(run: Run, page, name: str, data: bytes, timeout_s: float = UPLOAD_TIMEOUT_S) -> str:
    """Analyse ``data`` through "Bring your own images"; the visitor's message ("opened my-images" when the
    upload's bundle opened without a message)."""
    await byo_click(run, page, name, data)
    done = f"({ALERT_EXPR} || document.querySelector(\"[data-testid='stSidebar']\").innerText.includes('my-images'))"
    if not await settle(page, done, timeout_s):
        return f"no answer within {timeout_s:.0f} s"
    return await message(page) or "opened my-images"


async def clean_visit(run: Run, upload: bool, landing: bool) -> tuple[bool, str]:
    """Another visitor (a new client): the overview of the demo (and the landing page), and when ``upload`` a
    small upload of its own. (affected, what it saw)."""
    t0, problems = time.perf_counter(), []
    ctx, page = await run.page(run.next_client("192.0.2"))
    try:
        for path in (["/?bundle=demo"] + (["/"] if landing else [])):
            await page.goto(run.url + path)
            if not await settle(page, OVERVIEW_DONE, CLEAN_TIMEOUT_S):
                problems.append(f"{path}: nothing drawn in {CLEAN_TIMEOUT_S:.0f} s")
            broken = await page.evaluate(BROKEN_JS)
            if broken:
                problems.append(f"{path}: {broken}")
        if upload:
            seen = await upload_single(run, page, f"clean{run._n}.png", small_png(run._n), CLEAN_TIMEOUT_S)
            if not seen.startswith("p_fake"):
                problems.append(f"own upload: {seen[:120]}")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    finally:
        await ctx.close()
    return bool(problems), "; ".join(problems) if problems else f"no ({time.perf_counter() - t0:.0f} s)"


# ------------------------------------------------------------------------------------------ attacks
def plain_refusal(msg: str) -> str:
    """"" when ``msg`` is a refusal in plain words, else what is wrong with it."""
    if not msg or msg.startswith(("p_fake", "no answer")):
        return f"not refused ({msg[:40] or 'no message'})"
    if CRASH in msg:
        return "crashed"
    leak = LEAKS.search(msg)
    return f"leaks {leak.group(0)!r}" if leak else ""


def single_upload(kind: str, size: tuple[int, int], admitted: bool) -> Callable[[Run], Awaitable[Outcome]]:
    async def attack(run: Run) -> Outcome:
        data = image_bomb(kind, *size)
        ctx, page = await run.page()
        try:
            msg = await upload_single(run, page, f"{kind}_{size[0]}x{size[1]}.{SUFFIX[kind]}", data)
        finally:
            await ctx.close()
        problem = ("" if msg.startswith("p_fake") else f"not analysed ({msg[:60]})") if admitted else plain_refusal(msg)
        return Outcome(msg, not problem, problem, {"file_bytes": len(data), "pixels": size[0] * size[1]})
    return attack


def three_uploads(size: tuple[int, int], admitted: bool, kind: str = "webp") -> Callable[[Run], Awaitable[Outcome]]:
    async def one(run: Run, i: int) -> str:
        ctx, page = await run.page()
        try:
            return await upload_single(run, page, f"three{i}.{SUFFIX[kind]}", image_bomb(kind, size[0], size[1] - i))
        finally:
            await ctx.close()

    async def attack(run: Run) -> Outcome:
        msgs = await asyncio.gather(*(one(run, i) for i in range(3)), return_exceptions=True)
        msgs = [m if isinstance(m, str) else f"{type(m).__name__}" for m in msgs]
        problems = [("" if m.startswith("p_fake") else f"not analysed ({m[:50]})") if admitted else plain_refusal(m)
                    for m in msgs]
        problems = [p for p in problems if p]
        return Outcome(" / ".join(m[:60] for m in msgs), not problems, "; ".join(problems), {"messages": msgs})
    return attack


def zip_upload(build: Callable[[], bytes], check: Callable[[Run, str], str] | None = None):
    async def attack(run: Run) -> Outcome:
        data = build()
        ctx, page = await run.page()
        try:
            msg = await upload_byo(run, page, "set.zip", data)
        finally:
            await ctx.close()
        leak = LEAKS.search(msg)
        problem = "crashed" if CRASH in msg else ("" if not leak else f"leaks {leak.group(0)!r}")
        if "Could not load CLIP" in msg or "model" in msg.lower() and "cache" in msg.lower():
            problem = problem or "not exercised: the upload's model is missing"
        problem = problem or (check(run, msg) if check else "") or \
            ("no answer" if msg.startswith("no answer") else "")
        return Outcome(msg, not problem, problem, {"zip_bytes": len(data)})
    return attack


def no_escape(run: Run, msg: str) -> str:
    """The traversal zip's members must not exist outside the upload folders."""
    uploads = [p for p in run.work.rglob("abuse-escape-*") if "uploads" not in p.parts]
    found = uploads + list(Path("/tmp").glob("abuse-escape-*")) + list(ROOT.glob("abuse-escape-*"))
    return f"written outside the upload: {[str(p) for p in found]}" if found else ""


async def ask_maps(run: Run, forwarded: str, image_id: str) -> str:
    """One new session of a client asks for the maps of one image: "granted", "refused: ..." or "unclear: ..."."""
    ctx, page = await run.page(forwarded)
    try:
        await page.goto(f"{run.url}/attention?bundle=demo&images={image_id[:12]}")
        done = f"({ALERT_EXPR} || document.querySelectorAll(\"[data-testid='stMain'] img\").length >= 10)"
        if not await settle(page, done, 180):
            return "unclear: no answer"
        msg = await message(page)
        n = await page.evaluate("() => document.querySelectorAll(\"[data-testid='stMain'] img\").length")
        if msg and not msg.startswith("p_fake"):
            return f"refused: {msg}"
        return "granted" if n >= 10 else f"unclear: {n}"
    finally:
        await ctx.close()


# what the (simulated) proxy appends: the client's real address; one per run, since a reused work folder or a
# shared PostgreSQL store keeps the day's budgets
SPOOF_CLIENT = f"203.0.113.{os.getpid() % 250 + 2}"
TWO_CLIENT = f"203.0.114.{os.getpid() % 250 + 2}"  # the client of the two-servers attack, a budget of its own
SPOOF_BUDGET = 3


async def spoof_forwarded(run: Run) -> Outcome:
    """One client, budget 3, asks for maps of 8 new images: new sessions, made-up X-Forwarded-For prefixes
    and a server restart (budgets must survive it)."""
    from asap_core.storage.bundle import Bundle

    ids = Bundle.open(run.roots["B"] / "demo").images["image_id"].astype(str).tolist()
    c = SPOOF_CLIENT
    plan = [c, c, f"1.2.3.4, {c}", f"5.6.7.8, 9.9.9.9, {c}", "restart", c, f"10.0.0.1, {c}", f"198.51.100.9, {c}"]
    answers = []
    for i, forwarded in enumerate(plan):
        if forwarded == "restart":
            run.restart()
            continue
        answers.append((forwarded, await ask_maps(run, forwarded, ids[i])))
    granted = sum(a == "granted" for _, a in answers)
    unclear = [a for _, a in answers if a.startswith("unclear")]
    msg = f"{granted} of {len(answers)} map requests granted (budget {SPOOF_BUDGET})"
    refusals = [a for _, a in answers if a.startswith("refused")]
    if refusals:
        msg += f"; refusal: {refusals[0][9:120]}"
    note = f"{granted} > budget {SPOOF_BUDGET}" if granted > SPOOF_BUDGET else ("; ".join(unclear) if unclear else "")
    return Outcome(msg, not note, note, {"answers": answers})


async def two_servers(run: Run) -> Outcome:
    """Two ``serve`` processes on one ``ASAP_STATE_URL`` (configuration B and its twin B2): one client, budget 3,
    asks each server in turn for the maps of a new image (6 requests, new sessions). They share the budget when
    no more than 3 are granted in all."""
    from asap_core.storage.bundle import Bundle

    ids = Bundle.open(run.roots["B"] / "demo").images["image_id"].astype(str).tolist()
    first, twin = run.current, run.servers["B2"]
    twin.start()
    answers = []
    try:
        for i in range(6):
            run.current = first if i % 2 == 0 else twin
            answers.append((run.current.name, await ask_maps(run, TWO_CLIENT, ids[-1 - i])))
    finally:
        run.current = first
        twin.stop()
    granted = [name for name, a in answers if a == "granted"]
    msg = (f"{len(granted)} of {len(answers)} map requests granted (budget {SPOOF_BUDGET}) by two servers on one "
           f"state store: " + ", ".join(f"{n} {a.split(':')[0]}" for n, a in answers))
    note = f"{len(granted)} > budget {SPOOF_BUDGET}" if len(granted) > SPOOF_BUDGET else (
        "the twin granted nothing: not exercised" if "B2" not in granted and len(granted) < SPOOF_BUDGET else "")
    return Outcome(msg, not note, note, {"answers": answers})


EVICT_SESSIONS = 51  # more than the 50 sessions' uploads the explorer once kept before evicting the oldest


async def _evictor(run: Run, i: int) -> str:
    ctx, page = await run.page(run.next_client("198.51"))
    try:
        await byo_click(run, page, f"mine{i}.zip", zip_plain(2, seed=i + 1))
        await settle(page, f"({ALERT_EXPR} || document.body.innerText.includes('Analysing'))", 60)
        return await message(page)
    except Exception as exc:
        return f"{type(exc).__name__}"
    finally:
        await ctx.close()


async def eviction(run: Run) -> Outcome:
    """A first visitor analyses an upload and keeps its session; ``EVICT_SESSIONS`` others upload after it;
    then the first visitor moves to another page of its upload's bundle."""
    ctx, page = await run.page(run.next_client("203.0.113"))
    try:
        first = await upload_byo(run, page, "first.zip", zip_plain(3, seed=0))
        if first != "opened my-images":
            return Outcome(f"first upload: {first[:100]}", False, "the first upload did not open")
        msgs = []
        for k in range(0, EVICT_SESSIONS, 4):
            msgs += await asyncio.gather(*(_evictor(run, i) for i in range(k, min(k + 4, EVICT_SESSIONS))))
        await page.get_by_role("link", name="Images").first.click()
        await settle(page, SIDEBAR_DONE, 120)
        await page.get_by_role("link", name="Overview").first.click()
        ok = await settle(page, OVERVIEW_DONE, 120)
        broken = await page.evaluate(BROKEN_JS)
        still = "my-images" in await page.locator("[data-testid='stSidebar']").inner_text()
        refused = sorted({m[:80] for m in msgs if m})
        msg = (f"first upload {'still opens' if ok and not broken and still else 'LOST: ' + (broken or 'not shown')}"
               f"; {len(msgs)} later uploads" + (f", told: {refused[0]}" if refused else ""))
        kept = bool(ok and not broken and still)
        return Outcome(msg, kept, "" if kept else "first upload lost", {"later": msgs})
    finally:
        await ctx.close()


def bundle_visit(paths: list[str]) -> Callable[[Run], Awaitable[Outcome]]:
    """A visitor opens ``paths`` (the crafted bundle); the attack holds when no page crashed or leaked."""
    async def attack(run: Run) -> Outcome:
        todo = resolve_paths(paths, run.roots["A"]) if any(p.startswith("THUMBS") for p in paths) else paths
        ctx, page = await run.page()
        seen, problems = [], []
        try:
            for path in todo:
                await page.goto(run.url + path)
                if not await settle(page, SIDEBAR_DONE, 180):
                    problems.append(f"{path}: no answer")
                await page.wait_for_timeout(1500)
                msg = await message(page)
                seen.append(msg)
                if CRASH in msg or LEAKS.search(msg):
                    problems.append(f"{path}: {msg[:80]}")
        finally:
            await ctx.close()
        first = next((m for m in seen if m), "(no message)")
        return Outcome(first, not problems, "; ".join(problems), {"messages": dict(zip(todo, seen))})
    return attack


async def markdown_names(run: Run) -> Outcome:
    """Pages that show the crafted file and dimension names; no link or image may point at an outside host."""
    import pandas as pd

    images = pd.read_parquet(run.roots["A"] / "md-names" / "images.parquet")
    ids, cell = images["image_id"].astype(str).tolist()[:2], int(images.at[0, "cell"])
    paths = ["/?bundle=md-names", f"/attention?bundle=md-names&images={ids[0][:12]},{ids[1][:12]}",
             "/dimensions?bundle=md-names", f"/images?bundle=md-names&cell={cell}", "/patterns?bundle=md-names"]
    before, found = len(run.outside), []
    ctx, page = await run.page()
    try:
        for path in paths:
            await page.goto(run.url + path)
            await settle(page, SIDEBAR_DONE, 180)
            await page.wait_for_timeout(2000)
            found += [f"{path}: {u[:60]}" for u in await page.evaluate(OUTSIDE_JS, list(OUTSIDE_HOSTS))]
    finally:
        await ctx.close()
    fetched = [u for u in run.outside[before:] if any(h in u for h in OUTSIDE_HOSTS)]
    msg = f"{len(found)} links/images to outside hosts, {len(fetched)} outside requests"
    return Outcome(msg + (f" (e.g. {found[0]})" if found else ""), not found and not fetched,
                   "outside links" if found or fetched else "", {"found": found, "fetched": fetched})


def query_visit(path: str) -> Callable[[Run], Awaitable[Outcome]]:
    async def attack(run: Run) -> Outcome:
        before = run.current.log_count(r"error id")
        ctx, page = await run.page()
        try:
            await page.goto(run.url + path)
            done = await settle(page, SIDEBAR_DONE, 120)
            await page.wait_for_timeout(1500)
            msg = await message(page)
        finally:
            await ctx.close()
        logged = run.current.log_count(r"error id") - before
        problems = ([] if done else ["no answer"]) + ([CRASH] if CRASH in msg else []) + \
            ([f"{logged} error ids logged"] if logged else [])
        return Outcome(msg or "(no message)", not problems, "; ".join(problems), {"error_ids_logged": logged})
    return attack


# ------------------------------------------------------------------------------------------ the catalogue
@dataclass
class Attack:
    """One named attack: its server configuration, what the attacker does, how the clean visitor checks."""

    name: str
    config: str  # "A": hosted defaults; "B": ASAP_TRUSTED_PROXIES=1, relevance budget 3
    run: Callable[[Run], Awaitable[Outcome]]
    clean_upload: bool = False  # the clean visitor also analyses an upload of its own
    landing: bool = False  # the clean visitor also opens the landing page (no bundle named)
    limit_mb: float = 1024.0
    bundle: str | None = None  # a crafted bundle moved into the root for this attack
    timeout_s: float = 600.0  # the attack's whole run


def catalogue() -> list[Attack]:
    """Every attack, in the order they run."""
    out = [Attack(f"bomb_{k}", "A", single_upload(k, OVER[k], admitted=False), clean_upload=True) for k in OVER]
    out += [Attack(f"under_{k}", "A", single_upload(k, UNDER_KIND[k], admitted=True), clean_upload=True)
            for k in OVER]
    out += [Attack("three_webp_under", "A", three_uploads(UNDER_KIND["webp"], True), clean_upload=True,
                   limit_mb=1536),
            Attack("three_png_rgba_under", "A", three_uploads(UNDER, True, "png_rgba"), clean_upload=True,
                   limit_mb=1536),
            Attack("three_webp_bombs", "A", three_uploads(OVER["webp"], False), clean_upload=True, limit_mb=1536),
            Attack("zip_webp_bombs", "A", zip_upload(zip_webp_bombs), clean_upload=True),
            Attack("zip_grey_pngs", "A", zip_upload(zip_grey_pngs), clean_upload=True),
            Attack("zip_zero_members", "A", zip_upload(zip_zero_members), clean_upload=True),
            Attack("zip_traversal", "A", zip_upload(zip_traversal, no_escape), clean_upload=True)]
    out += [Attack("bundle_nested_json", "A", bundle_visit(["/?bundle=aaa-nested", "/"]), landing=True,
                   bundle="aaa-nested"),
            Attack("bundle_nan_cells", "A", bundle_visit(["/?bundle=aaa-nan", "/"]), landing=True, bundle="aaa-nan"),
            Attack("bundle_huge_thumbs", "A", bundle_visit(["/", "/?bundle=aaa-thumbs", "THUMBS_ATTENTION",
                                                            "THUMBS_GRID"]), landing=True, bundle="aaa-thumbs"),
            Attack("markdown_names", "A", markdown_names, bundle="md-names"),
            Attack("query_cell_superscript", "A", query_visit("/?bundle=demo&cell=%C2%B2")),
            Attack("query_cell_5000_digits", "A", query_visit("/?bundle=demo&cell=" + "7" * 5000)),
            Attack("query_quiz_superscript", "A", query_visit("/quiz?bundle=demo&quiz=cell:%C2%B2:5:1"))]
    out += [Attack("spoof_forwarded", "B", spoof_forwarded), Attack("two_servers", "B", two_servers),
            Attack("eviction", "B", eviction, clean_upload=True, timeout_s=1800.0)]  # 51 analyses, 2 slots
    return out


GROUPS = {"bombs": "bomb_", "under": "under_", "three": "three_", "zips": "zip_", "bundles": "bundle_",
          "queries": "query_"}


def select(attacks: list[Attack], spec: str | None) -> list[Attack]:
    """``spec``: comma-separated names or groups (``GROUPS``); None or "all": every attack."""
    if not spec or spec == "all":
        return attacks
    want = [w.strip() for w in spec.split(",") if w.strip()]
    chosen = [a for a in attacks if a.name in want or any(a.name.startswith(GROUPS.get(w, "\0")) for w in want)]
    unknown = [w for w in want if w not in GROUPS and w not in {a.name for a in attacks}]
    if unknown:
        raise SystemExit(f"unknown attacks: {unknown}; --list names them")
    return chosen


def stage_bundle(name: str, demo: Path, staged: Path) -> Path:
    """The crafted bundle ``name`` in ``staged`` (built once)."""
    dest = staged / name
    if (dest / "bundle.json").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    staged.mkdir(parents=True, exist_ok=True)
    build = {"aaa-nested": nested_json_bundle, "aaa-nan": nan_cells_bundle,
             "aaa-thumbs": lambda d, t: huge_thumbs_bundle(d, t)[0], "md-names": lambda d, t: markdown_bundle(d, t)[0]}
    return build[name](demo, dest)


def resolve_paths(paths: list[str], root: Path) -> list[str]:
    """The huge-thumbnail pages need the crafted bundle's ids: filled in once it is staged."""
    import pandas as pd

    images = pd.read_parquet(root / "aaa-thumbs" / "images.parquet")
    ids = huge_thumb_ids(images)
    cell = int(images.loc[images["image_id"] == ids[0], "cell"].iloc[0])
    fill = {"THUMBS_ATTENTION": f"/attention?bundle=aaa-thumbs&images={ids[0][:12]},{ids[1][:12]}",
            "THUMBS_GRID": f"/images?bundle=aaa-thumbs&cell={cell}"}
    return [fill.get(p, p) for p in paths]


# ------------------------------------------------------------------------------------------ running
CLEAN_DELAY_S = 3.0  # the clean visitor arrives this long after the attack started


@dataclass
class Row:
    attack: str
    rss_growth_mb: float
    disk_growth_mb: float
    message: str
    others_affected: str
    verdict: str
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


async def _clean_later(run: Run, attack: Attack) -> tuple[bool, str]:
    await asyncio.sleep(CLEAN_DELAY_S)
    return await clean_visit(run, attack.clean_upload, attack.landing)


async def run_attack(run: Run, attack: Attack, demo: Path) -> Row:
    """Run ``attack`` with the sampler on and a clean visitor alongside; its table row."""
    server = await run.use(attack.config)
    root = run.roots[attack.config]
    if attack.bundle:
        os.replace(stage_bundle(attack.bundle, demo, run.work / "staged"), root / attack.bundle)
    cache = Path(server.env["ASAP_CACHE_DIR"])
    await asyncio.sleep(1.0)
    pid, t0 = server.proc.pid, time.perf_counter()
    base, hwm0, disk0 = tree_rss_mb(pid), status_mb(pid, "VmHWM"), dir_mb(cache)
    sampler = RssSampler(pid)
    sampler.start()
    clean = asyncio.create_task(_clean_later(run, attack))
    try:
        out = await asyncio.wait_for(attack.run(run), attack.timeout_s)
    except Exception as exc:
        first_line = str(exc).splitlines()[0][:100] if str(exc) else ""
        out = Outcome(f"attack did not finish: {type(exc).__name__}: {first_line}", False, "did not finish")
    affected, seen = await clean
    peak, hwm1 = sampler.stop(), status_mb(pid, "VmHWM")
    peak = max(peak, hwm1) if hwm1 > hwm0 else peak
    growth, disk = peak - base, dir_mb(cache) - disk0
    if attack.bundle and (root / attack.bundle).exists():
        os.replace(root / attack.bundle, run.work / "staged" / attack.bundle)
    reasons = [out.note] if out.note else []
    if sampler.tripped or not server.alive():
        reasons.append(f"server {'killed past the 8 GB guard' if sampler.tripped else 'died'}")
        affected, seen = True, f"server down ({seen})"
        server.stop()
    if growth > attack.limit_mb:
        reasons.append(f"RSS +{growth:.0f} MB > {attack.limit_mb:.0f}")
    if affected:
        reasons.append("another visitor affected")
    return Row(attack.name, round(growth), round(disk, 1), out.message, ("yes: " + seen) if affected else seen,
               "ok" if not reasons else "FAIL: " + "; ".join(reasons), round(time.perf_counter() - t0, 1),
               {"baseline_rss_mb": round(base), "peak_rss_mb": round(peak), **out.extra})


def _cell(text: str, n: int = 110) -> str:
    text = " ".join(str(text).split())
    return (text[:n - 1] + "…" if len(text) > n else text).replace("|", "\\|")


def table(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    lines = ["| attack | RSS growth MB | disk growth MB | visitor's message | others affected | verdict |",
             "|---|---:|---:|---|---|---|"]
    lines += [f"| {r.attack} | {r.rss_growth_mb:.0f} | {r.disk_growth_mb:.1f} | {_cell(r.message)} | "
              f"{_cell(r.others_affected, 80)} | {_cell(r.verdict, 90)} |" for r in rows]
    return "\n".join(lines)


def setup(work: Path, state_url: str | None = None) -> tuple[Path, dict[str, Server], dict[str, Path]]:
    """The demo bundle (built once in ``work``), the two bundle roots and their server configurations."""
    from load_test import build_demo_bundle

    from asap_core.pipeline.demo import RANDOM_CLIP, write_random_clip

    demo = build_demo_bundle(work)
    if not (work / "random-clip" / "config.json").is_file():  # a reused bundle: its CLIP was not written
        write_random_clip(work / "random-clip", **RANDOM_CLIP)
    servers, roots = {}, {}
    extra = {"A": {"ASAP_RELEVANCE_BUDGET": "100000"},
             "B": {"ASAP_RELEVANCE_BUDGET": str(SPOOF_BUDGET), "ASAP_TRUSTED_PROXIES": "1"}}
    for name, more in extra.items():
        root = work / f"root-{name}"
        if not (root / "demo" / "bundle.json").is_file():
            shutil.rmtree(root, ignore_errors=True)
            copy_bundle(demo, root / "demo")
        cache = work / f"cache-{name}"
        cache.mkdir(exist_ok=True)
        env = {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(root), "ASAP_BUNDLE": "", "ASAP_CACHE_DIR": str(cache),
               "ASAP_STATE_URL": f"sqlite:///{work / f'state-{name}.sqlite3'}", "ASAP_MAX_UPLOAD_MB": "10",
               "ASAP_CLIENT_HEADER": "X-Forwarded-For", "ASAP_TRUSTED_PROXIES": "0",
               "ASAP_MODEL": str(work / "random-clip"), **more}  # labelled uploads train with this CLIP, offline
        if name == "B" and state_url:  # the budget attacks on another store (e.g. PostgreSQL)
            env["ASAP_STATE_URL"] = state_url
        servers[name], roots[name] = Server(name, env, work / f"server-{name}.log"), root
    servers["B2"], roots["B2"] = Server("B2", dict(servers["B"].env), work / "server-B2.log"), roots["B"]
    return demo, servers, roots


async def run_all(attacks: list[Attack], work: Path, state_url: str | None = None) -> list[Row]:
    from browser_helpers import CHROMIUM, CHROMIUM_ARGS
    from playwright.async_api import async_playwright

    demo, servers, roots = setup(work, state_url)
    rows = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        run = Run(browser, work, servers, roots)
        try:
            for attack in attacks:
                print(f"{attack.name} ...", flush=True)
                try:
                    row = await run_attack(run, attack, demo)
                except Exception as exc:
                    row = Row(attack.name, 0, 0, f"not run: {type(exc).__name__}: {str(exc)[:200]}", "?",
                              "FAIL: not run")
                rows.append(row)
                print(f"  {row.verdict} | RSS +{row.rss_growth_mb:.0f} MB | disk +{row.disk_growth_mb} MB | "
                      f"{row.seconds} s | {_cell(row.message, 140)} | others: {_cell(row.others_affected, 100)}",
                      flush=True)
        finally:
            await browser.close()
            for s in servers.values():
                s.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", help="comma-separated attack names or groups (" + ", ".join(GROUPS) + "); default all")
    ap.add_argument("--out", type=Path, help="write the table and the details here (JSON)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (servers' logs, caches)")
    ap.add_argument("--work", type=Path, help="use this folder (kept; the demo bundle is reused from it)")
    ap.add_argument("--list", action="store_true", help="list the attacks and exit")
    ap.add_argument("--state-url", help="ASAP_STATE_URL of the budget attacks' servers (default: an SQLite file "
                                        "in the work folder), e.g. postgresql+psycopg://asap:asap@127.0.0.1/asap_test")
    args = ap.parse_args(argv)
    attacks = select(catalogue(), args.attacks)
    if args.list:
        print("\n".join(f"{a.name} (server {a.config})" for a in attacks))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="asap-abuse-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}", flush=True)
    t0 = time.perf_counter()
    try:
        rows = asyncio.run(run_all(attacks, work, args.state_url))
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{len(rows)} attacks in {time.perf_counter() - t0:.0f} s; server RSS growth = peak over the "
          "pre-attack VmRSS of the server's process tree (20 Hz samples and VmHWM)\n")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"table": table(rows), "rows": [vars(r) for r in rows]}, indent=1, default=str))
    return 0 if all(r.verdict == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
