"""``analyze --from-embeddings TABLE``: the images come as a table of ids whose embeddings and thumbnails are
already in the cache (an earlier ``analyze``, ``--engine ray`` on a cluster, or a run stopped after its
embedding pass), so scanning and hashing are skipped and the embedding pass only reads the cache; every
later stage is ``analyze``'s own (``analyze.after_embedding``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..inputs.scan import COLUMNS, ScanResult, shown_path
from ..model.device import dtype_name
from .stages import Embedded, RunContext, embedding_stores, keep_embedded

TABLE_COLUMNS = ("image_id", "path", "label")  # required; optional: relpath, generator, source, split
LAYOUT = "embeddings table"
_LABELS = {"real": "real", "fake": "fake", "": None}


def _read(table: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, Path, str]:
    """(the table as strings, the folder its relative paths start from, its name for messages)."""
    if isinstance(table, pd.DataFrame):
        return table.copy(), Path.cwd(), "the table"
    path = Path(table).expanduser()
    if not path.is_file():
        raise InputError(f"{shown_path(path)} is not a file.",
                         "pass a .parquet or .csv table with columns image_id, path, label.")
    try:
        df = (pd.read_parquet(path) if path.suffix.lower() == ".parquet"
              else pd.read_csv(path, dtype=object, keep_default_na=False))
    except Exception as exc:
        raise InputError(f"{shown_path(path)}: cannot read the table ({type(exc).__name__}).",
                         "write it as Parquet or as a UTF-8 CSV with columns image_id, path, label.") from None
    return df, path.parent, shown_path(path.name)


def _relative(paths: pd.Series, root: Path) -> pd.Series:
    """``paths`` under ``root`` relative to it (the folder the summary counts by), the others as given."""
    prefix = str(root.resolve()) + "/"
    under = paths.str.startswith(prefix)
    return paths.where(~under, paths.str.slice(len(prefix)))


def read_ids_table(table: str | Path | pd.DataFrame) -> ScanResult:
    """The images of ``table`` as a scan result (columns ``scan.COLUMNS`` + ``image_id``): ``label`` real, fake
    or empty (unlabelled); ``relpath`` defaults to ``path`` (relative to the table's folder when under it);
    ``generator``, ``source``, ``split`` to None.
    A repeated id keeps its first row (the others are skipped with a reason); ``InputError`` for missing
    columns, empty ids or another label."""
    df, root, name = _read(table)
    lacking = [c for c in TABLE_COLUMNS if c not in df.columns]
    if lacking:
        raise InputError(f"{name} lacks the column(s) {', '.join(lacking)}.",
                         f"give it the columns {', '.join(TABLE_COLUMNS)} (optional: generator, split, relpath).")
    df = df.astype({c: object for c in df.columns})
    labels = df["label"].where(df["label"].notna(), "").astype(str).str.strip().str.lower()
    bad = sorted(set(labels) - set(_LABELS))
    if bad:
        raise InputError(f"{name}: label {bad[0]!r} is not real, fake or empty.", "use real, fake or leave it empty.")
    ids = df["image_id"].where(df["image_id"].notna(), "").astype(str)
    if (ids == "").any():
        raise InputError(f"{name}: {int((ids == '').sum())} rows have no image_id.", "give every row its image id.")
    images = pd.DataFrame({"path": df["path"].astype(str), "label": labels.map(_LABELS)})
    images["relpath"] = df["relpath"].astype(str) if "relpath" in df else _relative(images["path"], root)
    for col in ("generator", "source", "split"):
        images[col] = df[col].where(df[col].notna() & (df[col] != ""), None) if col in df else None
    images["image_id"] = ids.to_numpy()
    first = ~images["image_id"].duplicated()
    skipped = [(p, f"image id {i} repeats an earlier row; the first one is kept")
               for p, i in zip(images.loc[~first, "path"], images.loc[~first, "image_id"])]
    images = images[first].reset_index(drop=True)
    return ScanResult(root, images[[*COLUMNS, "image_id"]], LAYOUT, skipped)


def cached_embed_stage(ctx: RunContext, images: pd.DataFrame, root: Path) -> Embedded:
    """The embed stage's output read from the cache alone: the embeddings ``[N, D]`` float32 (one copy) and the
    thumbnail store of ``ctx``'s model and dtype. ``InputError`` when an id has no embedding or thumbnail."""
    store, thumbs = embedding_stores(ctx)
    ids = images["image_id"].tolist()
    absent = set(store.missing(ids)) | set(thumbs.missing(ids))
    if absent:
        raise InputError(
            f"{len(absent):,} of {len(ids):,} images of the table have no cached embedding or thumbnail for "
            f"{ctx.info.model_id} ({dtype_name(ctx.dtype)}) in {shown_path(ctx.cache)}.",
            "embed them first (analyze on their folder, or --engine ray) with the same --model, --dtype and "
            "--cache-dir, then run --from-embeddings again.")
    return keep_embedded(ctx, images, root, [], (store, thumbs))
