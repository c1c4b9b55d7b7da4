"""Class rounds of the quiz: a teacher starts a round from a quiz, students' answers are recorded anonymously,
the teacher's view reads them back. Stored in the state store (``storage.state_store``: SQLite by default,
``ASAP_STATE_URL`` for a database several servers share), so every server process sees the same round.

A round is a short code (:data:`CODE_CHARS` letters and digits, no look-alikes) naming a bundle (as links
name it), a quiz spec (``views.quiz.QuizSpec.to_param``) and its image ids. An answer row holds the round, a
random player token made by the server for one browser session (no name, no address, nothing personal), the
position in the quiz, the answer and whether it was right. A round expires :data:`ROUND_HOURS` hours after it
started: it accepts no answers and is not shown any more; expired rounds and their answers are deleted when
a new round starts. At most :data:`MAX_PLAYERS` players per round, :data:`MAX_ROUNDS_PER_OWNER` open rounds per
teacher (kept as a hash of their client id, never the id itself) and :data:`MAX_OPEN_ROUNDS` per store, so no
visitor can fill the database or take every round for themselves.
"""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, replace

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, Text, delete, func, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..errors import InputError
from .state_store import METADATA, StateStore, StateUnavailable

LOG = logging.getLogger("asap_explorer")

CODE_CHARS = 6
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no I, L, O, 0, 1
ROUND_HOURS = 12.0
MAX_PLAYERS = 200
MAX_OPEN_ROUNDS = 2000
MAX_ROUNDS_PER_OWNER = 20  # open rounds one visitor (client address) may start
MAX_ROUND_IMAGES = 50
PLAYER_CHARS = 32

#: one row per round
ROUNDS = Table(
    "quiz_rounds", METADATA,
    Column("code", String(CODE_CHARS), primary_key=True),
    Column("bundle", String(512), nullable=False),
    Column("quiz", String(256), nullable=False),
    Column("ids", Text, nullable=False),          # JSON list of image ids, in play order
    Column("owner", String(32), nullable=False),  # owner_key of the teacher's client id (no address kept)
    Column("created", Float, nullable=False),     # epoch s
    Column("expires", Float, nullable=False),     # epoch s
)
#: one row per answer: (round, player, position) is answered once
ANSWERS = Table(
    "quiz_answers", METADATA,
    Column("code", String(CODE_CHARS), primary_key=True),
    Column("player", String(PLAYER_CHARS), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("said", String(8), nullable=False),
    Column("correct", Boolean, nullable=False),
    Column("at", Float, nullable=False),
)


@dataclass(frozen=True)
class Round:
    """A class round: ``code``, ``bundle`` (as a link names it), ``quiz`` (spec text), ``ids`` (play order),
    ``created`` / ``expires`` (epoch s)."""

    code: str
    bundle: str
    quiz: str
    ids: tuple[str, ...]
    created: float
    expires: float


@dataclass(frozen=True)
class Answer:
    """One recorded answer: ``player`` token, ``position`` in the quiz (0-based), ``said`` real / fake,
    ``right``."""

    player: str
    position: int
    said: str
    right: bool


class RoundRefused(InputError):
    """A round cannot be started or answered (too many open, full, expired): worded for visitors."""


def new_player() -> str:
    """A random anonymous player token for one browser session (32 hex characters)."""
    return secrets.token_hex(PLAYER_CHARS // 2)


def clean_code(text: str | None) -> str | None:
    """A visitor-typed round code upper-cased and checked (:data:`CODE_ALPHABET`, :data:`CODE_CHARS` long);
    None when it cannot be one."""
    code = str(text or "").strip().upper()
    return code if len(code) == CODE_CHARS and all(c in CODE_ALPHABET for c in code) else None


def owner_key(client: str) -> str:
    """A teacher's client id as rounds keep it: 32 hex characters of its SHA-256 (the id itself is not stored)."""
    return hashlib.sha256(f"asap-class-round:{client}".encode()).hexdigest()[:32]


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_CHARS))


def _check_room(conn, owner: str) -> None:
    """``RoundRefused`` when ``owner`` already has :data:`MAX_ROUNDS_PER_OWNER` open rounds, or the store
    :data:`MAX_OPEN_ROUNDS` (expired rounds are deleted before this is asked)."""
    mine = conn.execute(select(func.count()).select_from(ROUNDS).where(ROUNDS.c.owner == owner)).scalar_one()
    if mine >= MAX_ROUNDS_PER_OWNER:
        raise RoundRefused(f"You have {mine} class rounds open, the most one teacher may have.",
                           f"use one of them, or wait: rounds close {ROUND_HOURS:g} hours after they start.")
    if conn.execute(select(func.count()).select_from(ROUNDS)).scalar_one() >= MAX_OPEN_ROUNDS:
        raise RoundRefused("This explorer has too many class rounds open right now.",
                           f"try again later: rounds close {ROUND_HOURS:g} hours after they start.")


def _unavailable(exc: Exception) -> StateUnavailable:
    """The visitor-safe error for a database failure; the details go to the server log."""
    LOG.error("class rounds unavailable: %s", exc)
    return StateUnavailable("Class rounds cannot be reached right now.", "try again in a minute.")


class ClassRounds:
    """Rounds and answers in ``store`` (a ``StateStore``); see the module docstring."""

    def __init__(self, store: StateStore) -> None:
        self.engine = store.engine

    def start(self, bundle: str, quiz: str, ids: list[str], owner: str = "", now: float | None = None) -> Round:
        """Start a round of ``quiz`` on ``bundle`` with image ``ids`` for the teacher ``owner`` (a client id);
        ``RoundRefused`` when that teacher or the store has too many open."""
        now = time.time() if now is None else float(now)
        row = Round(_new_code(), str(bundle)[:512], str(quiz)[:256], tuple(str(i) for i in ids[:MAX_ROUND_IMAGES]),
                    now, now + ROUND_HOURS * 3600)
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(ANSWERS).where(ANSWERS.c.code.in_(
                    select(ROUNDS.c.code).where(ROUNDS.c.expires <= now))))
                conn.execute(delete(ROUNDS).where(ROUNDS.c.expires <= now))
                _check_room(conn, owner_key(owner))
                while conn.execute(select(ROUNDS.c.code).where(ROUNDS.c.code == row.code)).first() is not None:
                    row = replace(row, code=_new_code())
                conn.execute(insert(ROUNDS).values(code=row.code, bundle=row.bundle, quiz=row.quiz,
                                                   owner=owner_key(owner), ids=json.dumps(list(row.ids)),
                                                   created=now, expires=row.expires))
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from None
        return row

    def get(self, code: str | None, now: float | None = None) -> Round | None:
        """The open round ``code`` (any case); None when there is none or it has expired."""
        code, now = clean_code(code), time.time() if now is None else float(now)
        if code is None:
            return None
        try:
            with self.engine.connect() as conn:
                r = conn.execute(select(ROUNDS).where(ROUNDS.c.code == code, ROUNDS.c.expires > now)).first()
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from None
        if r is None:
            return None
        return Round(r.code, r.bundle, r.quiz, tuple(json.loads(r.ids)), float(r.created), float(r.expires))

    def record(self, code: str, player: str, position: int, said: str, right: bool,
               now: float | None = None) -> bool:
        """Record ``player``'s answer at ``position`` of round ``code``; False when the round is closed or
        full, the position is not in it, or that answer was recorded already (the first answer counts)."""
        now = time.time() if now is None else float(now)
        rnd = self.get(code, now)
        if rnd is None or not 0 <= int(position) < len(rnd.ids) or said not in ("real", "fake"):
            return False
        player = str(player)[:PLAYER_CHARS]
        try:
            with self.engine.begin() as conn:
                players = select(func.count(func.distinct(ANSWERS.c.player))).where(ANSWERS.c.code == rnd.code)
                known = conn.execute(select(ANSWERS.c.player).where(ANSWERS.c.code == rnd.code,
                                                                    ANSWERS.c.player == player).limit(1)).first()
                if known is None and conn.execute(players).scalar_one() >= MAX_PLAYERS:
                    return False
                conn.execute(insert(ANSWERS).values(code=rnd.code, player=player, position=int(position),
                                                    said=said, correct=bool(right), at=now))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from None
        return True

    def answers(self, code: str) -> list[Answer]:
        """Every answer of round ``code`` (by player, then position)."""
        clean = clean_code(code)
        if clean is None:
            return []
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(ANSWERS.c.player, ANSWERS.c.position, ANSWERS.c.said, ANSWERS.c.correct)
                                    .where(ANSWERS.c.code == clean)
                                    .order_by(ANSWERS.c.player, ANSWERS.c.position)).all()
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from None
        return [Answer(str(r.player), int(r.position), str(r.said), bool(r.correct)) for r in rows]


__all__ = ["ANSWERS", "Answer", "CODE_ALPHABET", "ClassRounds", "ROUNDS", "ROUND_HOURS", "Round", "RoundRefused",
           "clean_code", "new_player", "owner_key"]
