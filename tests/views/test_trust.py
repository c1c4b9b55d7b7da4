"""Honest numbers (so nobody presents noise as findings): a bundle records where its CLIP came from; one made
with a random CLIP, or whose classifier is close to chance, says so on every page (also opened from a link), in
``info`` and ``analyze``; the fixes for missing weights name `hf download` and a local model folder, worded for the
CLI or the app."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages.glue.keys import PAGE_FILES
from asap_core.cli import analyze_text, main
from asap_core.model.encoder import inspect_checkpoint
from asap_core.model.hints import MissingWeights, hint_for, load_hint
from asap_core.pipeline.analyze import AnalyzeReport
from asap_core.pipeline.demo import random_clip_dir
from asap_core.settings import reload_settings
from asap_core.storage import schema as S
from asap_core.storage.bundle import Bundle
from asap_core.views.trust import encoder_source, metric_label, notices, trust_notices
from tests.conftest_app import analysed_bundle, no_exception, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
MEANINGLESS = "carry no meaning"


def edited_copy(bundle: Path, dest: Path, encoder: dict | None = None, metrics: dict | None = None,
                drop: tuple[str, ...] = ()) -> Path:
    """A copy of ``bundle`` whose bundle.json encoder section / metrics are updated (``drop``: encoder keys)."""
    shutil.copytree(bundle, dest)
    meta = json.loads((dest / S.META_NAME).read_text())
    meta["encoder"].update(encoder or {})
    for key in drop:
        meta["encoder"].pop(key)
    meta["metrics"].update(metrics or {})
    (dest / S.META_NAME).write_text(json.dumps(meta))
    return dest


@pytest.fixture
def local_copy(tiny_bundle, tmp_path) -> Path:  # noqa: F811
    """The tiny bundle as if made with a real (local) CLIP."""
    return edited_copy(tiny_bundle, tmp_path / "local-bundle", encoder={"source": "local"})


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    monkeypatch.delenv("ASAP_HOSTED", raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    reload_settings()


# ------------------------------------------------------------------------------------------ recording the source
def test_random_clip_is_marked_and_every_bundle_made_with_it_records_random(tiny_clip_dir, tiny_bundle):  # noqa: F811
    assert (tiny_clip_dir / S.RANDOM_CLIP_MARKER).is_file()          # tests' tiny CLIP: write_random_clip
    assert inspect_checkpoint(str(tiny_clip_dir)).source == "random"
    b = Bundle.open(tiny_bundle)                                       # analysed with it (not the demo)
    assert b.meta["encoder"]["source"] == "random" and encoder_source(b.encoder_info) == "random"
    (notice,) = trust_notices(b)
    assert notice.level == "warning" and notice.text.startswith("These numbers carry no meaning")
    assert metric_label(b) == " (random model: meaningless)"


def test_the_demos_random_clip_is_marked(tmp_path):
    folder = random_clip_dir(tmp_path)
    assert folder.name.startswith(S.RANDOM_CLIP_PREFIX) and (folder / S.RANDOM_CLIP_MARKER).is_file()
    assert inspect_checkpoint(str(folder)).source == "random"
    (folder / S.RANDOM_CLIP_MARKER).unlink()                          # written before the marker: its name tells
    assert inspect_checkpoint(str(folder)).source == "random"


@pytest.mark.slow
def test_a_local_clip_without_the_marker_records_local(tiny_clip_dir, small_folder, tmp_path):
    clip = shutil.copytree(tiny_clip_dir, tmp_path / "my-clip")
    (clip / S.RANDOM_CLIP_MARKER).unlink()
    info = inspect_checkpoint(str(clip))
    assert info.source == "local" and info.cache_key == inspect_checkpoint(str(tiny_clip_dir)).cache_key
    b = analysed_bundle(tmp_path, small_folder, clip)
    assert b.encoder_info.source == "local" and trust_notices(b) == [] and metric_label(b) == ""


def test_old_bundles_open_and_old_random_ones_are_still_found(tiny_bundle, tmp_path):  # noqa: F811
    old = edited_copy(tiny_bundle, tmp_path / "old", drop=("source",))
    b = Bundle.open(old)
    assert b.encoder_info.source == "unknown"
    assert encoder_source(b.encoder_info) == "random"                 # its model folder carries the marker
    cases = {str(tmp_path / "cache" / "random-clip-0123456789ab"): "random", "openai/clip-vit-base-patch32": "unknown"}
    for i, (model_id, want) in enumerate(cases.items()):
        b = Bundle.open(edited_copy(tiny_bundle, tmp_path / f"old{i}", encoder={"model_id": model_id},
                                    drop=("source",)))
        assert encoder_source(b.encoder_info) == want
        assert bool(trust_notices(b)) == (want == "random")


# ------------------------------------------------------------------------------------------ the notices
def test_a_classifier_close_to_chance_gets_a_caution(tiny_bundle, tmp_path):  # noqa: F811
    weak = edited_copy(tiny_bundle, tmp_path / "weak", encoder={"source": "hub"},
                       metrics={"val": {"n": 10, "accuracy": 0.6, "ap": 0.6, "roc_auc": 0.58}})
    (notice,) = trust_notices(Bundle.open(weak))
    assert notice.level == "caution"
    assert "close to chance on held-out images (ROC-AUC 0.58" in notice.text and "weak evidence" in notice.text
    assert notices("hub", {"val": {"roc_auc": S.MEANINGFUL_AUC}}) == []
    assert notices("hub", {"val": {"roc_auc": float("nan")}}) == []    # one class in validation: no figure
    assert "labelled images" in notices("local", {"all": {"roc_auc": 0.5}})[0].text   # an applied distiller
    assert [n.level for n in notices("random", {"val": {"roc_auc": 0.5}})] == ["warning"]   # one message

    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"bundle": str(weak)})
    at.run()
    no_exception(at)
    assert any("close to chance" in w.value for w in at.main.warning)


@pytest.mark.parametrize("where", ["cli", "app", "hosted"])
def test_the_random_model_fix_is_worded_for_where_it_is_read(where):
    (notice,) = notices("random", {}, where)
    if where == "cli":
        assert "--model /path/to/folder" in notice.fix and "hf download" in notice.fix
    elif where == "app":
        assert "Model field" in notice.fix and "ASAP_MODEL=/path/to/folder" in notice.fix
        assert "--model" not in notice.fix and "hf download" in notice.fix
    else:  # a visitor of the public explorer can do neither
        assert "operator" in notice.fix and "ASAP_MODEL" not in notice.fix


def test_missing_weights_name_hf_and_a_local_folder():
    exc = MissingWeights("Could not load CLIP model 'x/y'.", "x/y")
    assert "huggingface-cli" not in exc.hint and "hf download x/y" in exc.hint
    assert "--model /path/to/folder" in exc.hint and "HF_HUB_OFFLINE=1" in exc.hint
    app = hint_for(exc, "app")
    assert app == load_hint("x/y", "app") and "--model" not in app and "Model field" in app
    assert "ASAP_MODEL=/path/to/folder" in app and "HF_HUB_OFFLINE=1" in app
    assert "huggingface-cli" not in (Path(__file__).resolve().parents[2] / "README.md").read_text()


# ------------------------------------------------------------------------------------------ every page, from a link
def open_from_link(bundle: Path, slug: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"bundle": str(bundle), "page": slug})
    at.run()
    no_exception(at)
    return at


@pytest.mark.slow
def test_every_page_opened_from_a_link_warns_about_a_random_model(tiny_bundle):  # noqa: F811
    for slug in PAGE_FILES:
        at = open_from_link(tiny_bundle, slug)
        first = at.main.children[0]                                    # at the top of the main area
        assert first.type == "warning" and MEANINGLESS in first.value, slug
        fix = " ".join(m.value for m in at.main.children[1].markdown)  # folded right under the warning
        assert at.main.children[1].type == "expander" and "Fix:" in fix and "--model" not in fix, slug
        assert any("(random model: meaningless)" in c.value for c in at.sidebar.caption), slug


@pytest.mark.slow
def test_pages_of_a_bundle_made_with_a_real_clip_show_no_notice(local_copy):
    for slug in PAGE_FILES:
        at = open_from_link(local_copy, slug)
        assert not any(MEANINGLESS in w.value for w in at.warning), slug
        assert not any("meaningless" in c.value for c in at.sidebar.caption), slug


def test_a_missing_model_is_fixed_with_the_apps_fields_not_cli_flags(local_copy, tmp_path):
    moved = edited_copy(local_copy, tmp_path / "moved", encoder={"model_id": str(tmp_path / "no-such-clip")})
    at = open_from_link(moved, "overview")
    fixes = [c.value for c in at.sidebar.caption if c.value.startswith("Fix:")]
    assert fixes and all("--model" not in f for f in fixes)
    assert any("Local copy of this model" in f and "hf download" in f for f in fixes)


# ------------------------------------------------------------------------------------------ the command line
def test_info_and_the_analyze_summary_print_the_notices(tiny_bundle, local_copy, capsys):  # noqa: F811
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "source random" in out and f"WARNING: These numbers {MEANINGLESS}" in out
    assert "--model /path/to/folder" in out and "hf download" in out
    assert main(["info", str(local_copy)]) == 0
    out = capsys.readouterr().out
    assert "source local" in out and MEANINGLESS not in out

    report = AnalyzeReport(Path("b"), "real/fake folders", 2, 2, metrics={"val": {"n": 2, "accuracy": 1.0, "ap": 1.0,
                                                                                  "roc_auc": 1.0}})
    assert MEANINGLESS not in analyze_text(report)
    report.encoder_source = "random"
    assert MEANINGLESS not in report.summary()  # the pipeline's report holds the facts; the caller words them
    assert analyze_text(report).splitlines()[-2].startswith(f"WARNING: These numbers {MEANINGLESS}")
    assert "--model" in analyze_text(report) and "--model" not in analyze_text(report, "app")
