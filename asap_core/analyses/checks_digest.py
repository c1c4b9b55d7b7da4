"""The digest of ``analyze --faithfulness`` (``explanation_checks.summary_json``) in a bundle's ``cache/``:
written, read back and put in one line (what ``analyze`` and ``info`` print).

Apart from ``explanation_checks`` so that reading it costs no import of the checks themselves (SciPy):
``asap info`` reads it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..storage import schema as S

SUMMARY_FILE = "explanation-checks.json"  # in a bundle's cache/: the digest analyze --faithfulness wrote


def write_summary(cache_dir: str | Path, summary: dict) -> Path:
    """Write ``summary`` (``summary_json``) as ``cache_dir/SUMMARY_FILE`` (temporary name + rename)."""
    path = Path(cache_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, path)
    return path


def read_summary(bundle) -> dict | None:
    """The digest ``analyze --faithfulness`` stored in the bundle (``summary_json``), or None."""
    path = Path(bundle.cache_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checks_line(summary: dict) -> str:
    """One line on a stored digest (``summary_json``): the fake logit's faithfulness ratio and the targets the
    sanity check flags (what ``analyze --faithfulness`` and ``info`` print)."""
    rows = {r["target"]: r for r in summary["targets"]}
    fake = rows.get(S.FAKE_LOGIT, {})
    ratio = fake.get("ratio")
    flagged = [r["name"] for r in summary["targets"] if r.get("flagged")]
    what = ("nothing: not assessed (random CLIP)" if summary.get("encoder_random") else
            ", ".join(flagged) if flagged else "none")
    ratio_text = f"{ratio:.1f}x" if isinstance(ratio, (int, float)) else "n/a"
    return (f"Explanation checks ({len(summary['image_ids'])} images, {summary['method']}): fake-probability maps "
            f"leave {ratio_text} less than random ({fake.get('verdict', 'n/a')}); sanity check flags {what}")


__all__ = ["SUMMARY_FILE", "checks_line", "read_summary", "write_summary"]
