"""Bring your own images: a zip (or several images) uploaded in the sidebar becomes a bundle of this session.

Flow: the sidebar's "Bring your own images" expander checks the upload from the zip's directory
(``archive.plan_uploads``: no path escapes, only images, limited counts, bytes and inflation) and where its
images are placed; in hosted mode it then removes expired uploads, refuses the upload in words when all
uploads and their caches would pass ``ASAP_UPLOAD_STORAGE_MB`` (a live upload is never deleted to make room)
and charges the visitor (``budget.charge_upload``: images and bytes per day). Only then are the images
written into ``<cache>/uploads/<session>/<upload key>/`` and a job queued; the next run of ``page_start``
analyses it in the main area under ``staged_progress`` (in hosted mode inside ``budget.heavy_work``, one
decode thread, at most ``archive.HOSTED_MAX_IMAGES`` images) and opens the bundle. Every cache the analysis
writes is in the upload's folder, so an upload and its caches take one folder and expire together. The
same upload again reopens its bundle without new work or charge. Uploads without two real and two fake
images are placed with the open bundle's detector (its model and distiller) instead of training one.

``staged_progress`` is also the demo's first-load display (``sidebar.open_demo``).
"""
from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from asap_core.errors import AsapError, InputError
from asap_core.hosting import model_label
from asap_core.inputs.archive import (
    ANALYSIS_BYTES_PER_IMAGE,
    UploadLimits,
    UploadPlan,
    check_space,
    folder_bytes,
    is_zip_name,
    plan_uploads,
    prune_expired,
    prune_folders,
    upload_limits,
    write_plan,
)
from asap_core.inputs.scan import parse_parts
from asap_core.settings import settings
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import MODEL_DIR, N_DIMS
from asap_core.views.single import UPLOAD_TYPES

from . import budget, data, state
from .errors import show_error, show_warning, visible
from .keys import K_BUNDLE, K_BYO_JOB, K_LAST_REPORT, W_BYO_BTN, W_BYO_FILES, W_BYO_LABEL

UPLOADS_DIR = "uploads"  # under settings().cache_dir: one folder per browser session, one per upload inside
BUNDLE_DIR = "my-images"  # the bundle's folder name (what the sidebar shows); the images sit next to it
IMAGES_DIR = "images"
RUN_CACHE_DIR = "cache"  # the analysis' caches (embeddings, thumbnails, projection, ...), removed once it is done
UPLOAD_KEEP_S = 24 * 3600  # hosted mode: uploads not modified for this long are deleted, with their caches
MAX_TRIES = 2  # a queued analysis cut short by reruns is given up after this many starts
UPLOADS_PER_SESSION = 3  # hosted mode: a session keeps its newest uploads (and the open one)
# hosted mode: images an upload's analysis decodes at once; with ASAP_HEAVY_SLOTS analyses at a time, the
# decodes that run at once (each as large as ASAP_MAX_UPLOAD_PIXELS allows) stay that many
HOSTED_DECODE_THREADS = 1
_SPACE_LOCK = threading.Lock()  # one upload at a time measures the space left, is charged and is written
LOOSE_LABELS = {"real": "real", "fake": "fake", "unlabelled": None}  # radio choice -> archive.LABEL_FOLDERS
# analyze's stages in plain words; the stages that report progress (hash, embed, relevance) name the next
# silent ones when they end (``_NEXT``)
STAGE_WORDS = {
    "start": "getting the model ready",
    "hash": "fingerprinting the files",
    "embed": "embedding the images with the model (the longest step)",
    "fit": f"fitting the {N_DIMS} dimensions, training the detector, drawing the map",
    "relevance": "precomputing attention maps",
    "write": "writing the bundle",
}
_NEXT = {"hash": "embed", "embed": "fit", "relevance": "write"}


@dataclass
class Job:
    """An unpacked upload waiting for its analysis: folders, model, the open bundle's distiller or None."""

    images: str
    bundle: str
    model: str
    distiller: str | None
    n_images: int
    note: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    tries: int = 0
    cache_dir: str | None = None  # the analysis' caches: inside the upload's folder


# ------------------------------------------------------------------------------------------ progress
class _Stages:
    """Turns analyze's ``progress(stage, done, total)`` into one bar: step words, counts, time left."""

    def __init__(self, bar, steps: int) -> None:
        self.bar, self.steps, self.t0 = bar, steps, time.perf_counter()
        self.stage, self.n, self.stage_t0 = "start", 1, self.t0

    def _enter(self, stage: str) -> None:
        if stage != self.stage:
            self.stage, self.n, self.stage_t0 = stage, self.n + 1, time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._enter(stage)
        now = time.perf_counter()
        left = ""
        if 0 < done < total and now - self.stage_t0 > 0.5:
            left = f" · about {max(1, round((now - self.stage_t0) / done * (total - done)))} s left in this step"
        text = (f"Step {min(self.n, self.steps)} of {self.steps}: {STAGE_WORDS.get(stage, stage)} · "
                f"{done:,}/{total:,}{left} · {now - self.t0:.0f} s so far")
        self.bar.progress(min(done / max(total, 1), 1.0), text=text)
        if done >= total and stage in _NEXT:
            self._enter(_NEXT[stage])
            self.bar.progress(0.0, text=f"Step {min(self.n, self.steps)} of {self.steps}: "
                                        f"{STAGE_WORDS[self.stage]} ... · {now - self.t0:.0f} s so far")


@contextmanager
def staged_progress(intro: str = "", relevance: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """An info box ``intro`` (markdown) over a bar that names each of analyze's steps in plain words, with
    counts and the time left in the step (from its rate so far); yields ``progress(stage, done, total)``.
    Both are removed when the block ends (also on an error)."""
    box = st.empty()
    if intro:
        box.info(intro, icon=":material/hourglass_top:")
    steps = 6 if relevance else 4  # without relevance, writing the bundle ends the "fit" step (it is quick)
    bar = st.progress(0.0, text=f"Step 1 of {steps}: {STAGE_WORDS['start']} ...")
    try:
        yield _Stages(bar, steps)
    finally:
        bar.empty()
        box.empty()


# ------------------------------------------------------------------------------------------ folders
def session_folder() -> Path:
    """This browser session's upload folder (never a visitor-chosen path)."""
    sid = hashlib.sha1(budget.session_id().encode()).hexdigest()[:16]
    return settings().cache_dir / UPLOADS_DIR / sid


def upload_key(uploads: list[tuple[str, bytes]], label: str | None) -> str:
    """Content key of an upload: names, bytes and the loose images' label."""
    h = hashlib.sha1(repr(label).encode())
    for name, blob in sorted(uploads, key=lambda u: u[0]):
        h.update(name.encode("utf-8", "replace") + b"\0" + hashlib.sha1(blob).digest())
    return h.hexdigest()[:16]


def _make_room(folder: Path, need: int) -> None:
    """Hosted mode: remove expired uploads (older than ``UPLOAD_KEEP_S``, with their caches; never this one or
    the open bundle) and this session's uploads beyond its ``UPLOADS_PER_SESSION`` newest; ``InputError``
    when ``need`` more bytes would take all uploads past ``ASAP_UPLOAD_STORAGE_MB``. Other visitors' live
    uploads are never removed to make room."""
    s = settings()
    if not s.hosted:
        return
    root = s.cache_dir / UPLOADS_DIR
    open_now = st.session_state.get(K_BUNDLE)
    kept = [folder] + ([Path(open_now)] if open_now else [])
    prune_expired(root, UPLOAD_KEEP_S, keep=kept)
    prune_folders(folder.parent, UPLOAD_KEEP_S, keep=kept, max_count=UPLOADS_PER_SESSION - 1)
    check_space(folder_bytes(root), need, s.upload_storage_bytes)


def _plan_labels(plan: UploadPlan) -> tuple[int, int]:
    """(real, fake) images of a planned upload, by the folder words ``scan`` reads once it is written."""
    labels = [parse_parts(path.split("/")[:-1])["label"] for path in plan.relpaths]
    return labels.count("real"), labels.count("fake")


# ------------------------------------------------------------------------------------------ the job
def _placement(b: Bundle | None, n_real: int, n_fake: int) -> tuple[str, str | None, str]:
    """(model, distiller bundle or None, note): a new detector when the upload has 2 real and 2 fake
    images, else the open bundle's model and detector."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.model.encoder import resolve_model_id

    if n_real >= 2 and n_fake >= 2:
        model = resolve_model_id() if settings().hosted or b is None else data.encoder_model(b)
        return model, None, ""
    if b is None or not (b.path / MODEL_DIR).is_dir():
        raise InputError(f"The upload has {n_real} real and {n_fake} fake images: a detector needs at least 2 "
                         "of each to learn, and no open bundle has a detector to place them with.",
                         "put the images in real/ and fake/ folders inside the zip, or open a bundle first.")
    return (data.encoder_model(b), str(b.path),
            f"Without real and fake labels to learn from, your images are placed with the detector of the "
            f"bundle '{b.path.name}'.")


def prepare_job(b: Bundle | None, uploads: list[tuple[str, bytes]], label: str | None,
                limits: UploadLimits) -> Job | str | None:
    """Check, charge and unpack ``uploads`` for analysis: a ``Job``; the bundle path when this upload was
    analysed before (free); None (the error shown) when it cannot be used. Nothing is written or charged
    for an upload that is refused."""
    folder = session_folder() / upload_key(uploads, label)
    if (folder / BUNDLE_DIR / "bundle.json").is_file():
        return str(folder / BUNDLE_DIR)
    try:
        plan = plan_uploads(uploads, label, limits)
        model, distiller, note = _placement(b, *_plan_labels(plan))
        ok, msg, hint, _ = data.model_status(model)
        if not ok:
            show_warning(msg, hint)
            return None
        with _SPACE_LOCK:
            if folder.exists():  # an earlier try of this session that did not finish
                shutil.rmtree(folder, ignore_errors=True)
            _make_room(folder, plan.unpacked_bytes + plan.n_images * ANALYSIS_BYTES_PER_IMAGE)
            if not budget.charge_upload(plan.n_images, plan.upload_bytes):
                return None
            unpacked = write_plan(plan, folder / IMAGES_DIR, limits)
    except AsapError as exc:
        show_error(exc)
        return None
    except OSError as exc:  # disk full, permissions: said without the server's path or an operator setting
        show_error(AsapError(f"The upload could not be stored ({exc.strerror or 'input/output error'}).",
                             "try again later." if settings().hosted else
                             "try again later; free space in ASAP_CACHE_DIR."))
        return None
    return Job(str(unpacked.root), str(folder / BUNDLE_DIR), model, distiller, len(unpacked.files), note,
               unpacked.skipped, cache_dir=str(folder / RUN_CACHE_DIR))


def run_job(job: Job) -> None:
    """Analyse a queued upload in the main area (progress per step), then open its bundle; errors shown."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze

    t0 = time.perf_counter()
    intro = (f"**Analysing your {job.n_images:,} images** with {model_label(job.model)}: each image is embedded, "
             + ("then placed with the open bundle's detector." if job.distiller else
                "then a detector is trained on your real and fake images.")
             + " This page opens your bundle when it is done.")
    # decode threads: spawned worker processes would re-run this app's script (Streamlit's __main__)
    options = AnalyzeOptions(model=job.model, distiller=job.distiller, decoder="thread", cache_dir=job.cache_dir,
                             num_workers=HOSTED_DECODE_THREADS if settings().hosted else None)
    try:
        with budget.heavy_work(), staged_progress(intro) as progress:
            report = analyze(job.images, job.bundle, options, progress=progress)
    except AsapError as exc:
        show_error(exc)
        return
    if job.cache_dir:  # the bundle holds what the visitor sees; the run's caches only served a retry
        shutil.rmtree(job.cache_dir, ignore_errors=True)
    if state.open_bundle(str(report.bundle)):
        lines = [job.note] if job.note else []
        lines += [f"skipped {w}: {r}" for w, r in job.skipped[:20]]
        st.session_state[K_LAST_REPORT] = visible("\n".join(
            [*lines, report.summary(), f"In the app: {time.perf_counter() - t0:.1f} s"]))
        st.toast(f"Your {report.n_used:,} images are open"
                 + (f" ({len(job.skipped) + len(report.skipped):,} files skipped)." if job.skipped or report.skipped
                    else "."), icon=":material/check_circle:")


def run_pending() -> None:
    """``page_start``'s hook: run the queued upload, if any. A run cut short by a rerun (the visitor clicked
    during the work) is tried once more on the next run; one that ends, well or with its error shown, leaves."""
    job = st.session_state.get(K_BYO_JOB)
    if not isinstance(job, Job) or job.tries >= MAX_TRIES:
        st.session_state.pop(K_BYO_JOB, None)
        return
    job.tries += 1
    run_job(job)
    st.session_state.pop(K_BYO_JOB, None)


# ------------------------------------------------------------------------------------------ sidebar
def _limits_caption(limits: UploadLimits) -> str:
    mb = 1024 * 1024
    return (f"A zip of images (folders real/ and fake/ give the labels), or images. At most {limits.max_files:,} "
            f"images, {limits.max_file_bytes / mb:g} MB each and {limits.max_total_bytes / mb:g} MB in all.")


def upload_expander(b: Bundle | None) -> None:
    """The sidebar's "Bring your own images": uploader, where the labels come from, "Analyse my images"."""
    s = settings()
    limits = upload_limits(s)
    with st.expander("Bring your own images", icon=":material/upload_file:"):
        files = st.file_uploader("Zip or images", type=["zip", *UPLOAD_TYPES], accept_multiple_files=True,
                                 key=W_BYO_FILES, help=_limits_caption(limits),
                                 max_upload_size=budget.upload_limit())
        files = files or []
        loose = [f for f in files if not is_zip_name(f.name)]
        label = None
        if loose:
            label = LOOSE_LABELS[st.radio("The loose images are", list(LOOSE_LABELS), horizontal=True,
                                          key=W_BYO_LABEL)]
        if any(is_zip_name(f.name) for f in files):
            st.caption("Labels come from the folders in the zip: real/ and fake/ (a folder under fake/ names the "
                       "generator; 0_real/1_fake and nature/ai work too).")
        if s.hosted:
            st.caption("Your bundle stays with this browser session: a link to it cannot be shared, and it is "
                       "deleted after a day.")
        if st.button("Analyse my images", key=W_BYO_BTN, disabled=not files, type="primary"):
            _start(b, [(f.name, f.getvalue()) for f in files], label, limits)


def _start(b: Bundle | None, uploads: list[tuple[str, bytes]], label: str | None, limits: UploadLimits) -> None:
    """Unpack and queue the upload (or reopen its bundle), then rerun so the main area shows the work."""
    with st.spinner("Unpacking ..."):
        job = prepare_job(b, uploads, label, limits)
    if isinstance(job, str):
        if state.open_bundle(job):
            st.rerun()
    elif job is not None:
        st.session_state[K_BYO_JOB] = job
        st.rerun()

