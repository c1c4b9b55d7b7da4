"""Names shared across pages, glue and tests: session-state keys (plain keys survive page switches), widget keys
and page files. A key is written here once; pages, glue and tests use the names.

Session state: ``bundle_path`` (str), ``grid`` (int), ``filters`` (``views.overview.Filters``), ``sel_cells``
(list[int]), ``sel_images`` (list[str] full ids), ``method`` (a ``schema.RELEVANCE_METHODS`` name).

Widget keys start with ``w_`` for inputs whose value the page reads back, the page's name for buttons and
tables; Streamlit also puts a key into the element's CSS class (``.st-key-<key>``, see :func:`css_class`).
"""
from __future__ import annotations

from asap_core.views.pages import PAGES

# ------------------------------------------------------------------------------------------ session state
K_BUNDLE = "bundle_path"
K_GRID = "grid"
K_FILTERS = "filters"
K_CELLS = "sel_cells"
K_IMAGES = "sel_images"
K_METHOD = "method"
K_COLOR_BY = "color_by"  # overview colouring: views.generators.COLOR_BY
K_MODEL_OVERRIDE = "model_override"  # {bundle path: model id}: a local copy of a bundle's CLIP
K_QUIZ = "quiz_spec"  # the quiz the link names or a teacher started (views.quiz.QuizSpec.to_param)
K_DIM = "sel_dim"  # the dimension the Dimensions page shows (an index; a link's ``dim``)
K_INIT = "_link_loaded"
K_PENDING_IMAGES = "_link_images"
K_PENDING_PAGE = "_link_page"
K_ERROR = "_bundle_error"
K_WANT_DEMO = "_want_demo"
K_DEMO_NOTE = "_demo_note"
K_LAST_REPORT = "_last_analysis"
K_BYO_JOB = "_byo_job"  # an uploaded set waiting for its analysis (glue.byo.Job)
K_GUIDE_SEEN = "_guide_seen"  # "How to read this" was shown to this session
K_STUDENT = "_quiz_student"  # this session opened a quiz link: the student's view only (glue.quiz.student_mode)
K_ROUND = "_quiz_round"  # the class round code a student's link names (storage.class_rounds), or None
K_PLAYER = "_quiz_player"  # this session's anonymous player token in class rounds
K_TEACHER_ROUND = "_quiz_teacher_round"  # the code of the round this teacher started or watches
K_SESSION_ID = "_session_id"  # this browser session's id when Streamlit gives none (glue.budget.session_id)
K_QUIZ_PLAY = "quiz_play"  # {"key", "ids", "answers", "sure", "revealed", "recorded"}: this session's game
K_PAT_ZIP = "_pat_zip"  # (bundle path, zip bytes) of the last pattern export
K_ROB_TABLES = "_rob_tables"  # laundering tables run in this session (also cached in the bundle)
K_ROB_PAID = "_rob_charged"  # laundered views this session paid for (glue.data.laundered_for)
K_SINGLE_RESULTS = "_single_results"  # results of recent uploads on the Single image page
K_SINGLE_PAID = "_single_charged"  # uploads this session paid for (glue.data.upload_result)

# ------------------------------------------------------------------------------------------ widgets: sidebar
W_GUIDE_BTN = "w_guide_btn"
W_GUIDE_OK = "w_guide_ok"
W_OPEN_PATH = "w_open_path"
W_OPEN_BTN = "w_open_btn"
W_MODEL_OVERRIDE = "w_model_override"
W_MODEL_BTN = "w_model_btn"
W_AN_DIR = "w_an_dir"
W_AN_OUT = "w_an_out"
W_AN_MODEL = "w_an_model"
W_AN_REL = "w_an_rel"
W_AN_BTN = "w_an_btn"
W_BYO_FILES = "w_byo_files"
W_BYO_LABEL = "w_byo_label"
W_BYO_BTN = "w_byo_btn"

# ------------------------------------------------------------------------------------------ widgets: pages
W_LABEL = "w_label"  # overview filters and map
W_OUTCOME = "w_outcome"
W_GENS = "w_gens"
W_COLOR = "w_color"
W_GRID = "w_grid"
OV_OPEN = "ov_open"
OV_CLEAR = "ov_clear"
W_CONCEPTS = "w_concepts"  # images
W_K = "w_k"
IMG_ATTN = "img_attn"
IMG_CLEAR = "img_clear"
PAT_SEL = "pat_sel"  # "save as pattern" forms (see form_key)
PAT_CON = "pat_con"
W_METHOD = "w_method"  # attention
W_ALPHA = "w_alpha"
W_ATT_CHECKS = "w_att_checks"
W_DIM_SAVE = "dim_name_save"  # dimensions
W_VOCAB = "w_vocab"
W_DIM_WORDS = "w_dim_words"
W_DIM_CHECKS = "w_dim_checks"
W_TOPK = "w_topk"
W_DIR = "w_dir"
DIM_SEND = "dim_send"
W_DIM_MAPS = "w_dim_maps"
PAT_LIST = "pat_list"  # patterns
PAT_IMPACT = "pat_impact"
PAT_RANK = "pat_rank"
W_PAT_PICK = "w_pat_pick"
PAT_ATTN = "pat_attn"
PAT_DELETE = "pat_delete"
PAT_EXPORT = "pat_export"
PAT_DOWNLOAD = "pat_download"
W_GEN_SCOPE = "w_gen_scope"  # generators
W_GEN_NORM = "w_gen_norm"
W_GEN_REAL = "w_gen_real"
GEN_CM = "gen_cm"
GEN_TO_OVERVIEW = "gen_to_overview"
W_ROB_Q = "w_rob_q"  # robustness
W_ROB_S = "w_rob_s"
W_ROB_EACH = "w_rob_each"
W_ROB_MAPS = "w_rob_maps"
W_ROB_N = "w_rob_n"
ROB_RUN = "rob_run"
ROB_SUMMARY = "rob_summary"
W_ROB_IMG = "w_rob_img"
ROB_TABLE = "rob_table"
W_UPLOAD = "w_upload"  # single image
W_SINGLE_K = "w_single_k"
SINGLE_CELL = "single_cell"
SINGLE_GRID = "single_grid"
SINGLE_ATTN = "single_attn"
SINGLE_NB = "single_nb"
QUIZ_START = "quiz_start"  # quiz
QUIZ_ROUND_START = "quiz_round_start"
QUIZ_REAL = "quiz_real"
QUIZ_AI = "quiz_ai"
QUIZ_NEXT = "quiz_next"
QUIZ_AGAIN = "quiz_again"
#: the teacher's widgets, by the names of ``views.quiz.widget_defaults``
QUIZ_WIDGETS: dict[str, str] = {k: f"quiz_w_{k}" for k in ("source", "n", "seed", "cell", "pattern", "lab", "out",
                                                           "gen")}

#: widget keys of the overview that belong to one bundle (dropped when another opens)
BUNDLE_WIDGETS = (W_GRID, W_LABEL, W_OUTCOME, W_GENS)


# ------------------------------------------------------------------------------------------ keys with a part
def quiz_sure(i: int) -> str:
    """The "how sure" control of question ``i`` (a fresh widget per question, so no answer carries over)."""
    return f"quiz_sure_{int(i)}"


def dimension_name_input(dim: int) -> str:
    """The name box of dimension ``dim``."""
    return f"w_dim_name_{int(dim)}"


def dimension_picker(names_hash: str) -> str:
    """The Dimensions page's picker, new whenever a name changes (browsers keep a select box's old labels)."""
    return f"w_dim_{names_hash}"


def boundary_button(cell: int) -> str:
    """The overview's button of boundary cell ``cell``."""
    return f"ov_bnd_{int(cell)}"


def overview_chart(grid: int, state_hash: str) -> str:
    """The overview map of one grid, filter and colouring (a new chart, with fresh events, when they change)."""
    return f"ov_{int(grid)}_{state_hash}"


def grid_chart(grid: int, state_hash: str) -> str:
    """The Images page's grid chart of one grid, cell selection and filter."""
    return f"grid_{int(grid)}_{state_hash}"


def chart_value(chart_key: str) -> str:
    """The selection a chart is drawn with (the overview's ``value``), kept beside the chart's own state."""
    return f"_value_{chart_key}"


def chart_signature(chart_key: str) -> str:
    """The last event of chart ``chart_key`` already applied (``glue.state.consume_event``)."""
    return f"_sig_{chart_key}"


def form_key(form: str, part: str) -> str:
    """A widget of a "save as pattern" form (``PAT_SEL``, ``PAT_CON``): ``part`` in choice, name, note, save."""
    return f"{form}_{part}"


def css_class(key: str) -> str:
    """The CSS class Streamlit gives the element of widget ``key`` (for styles and browser tests)."""
    return f".st-key-{key}"


#: page slug -> its script (``views.pages``, the one list of pages)
PAGE_FILES: dict[str, str] = {p.slug: p.file for p in PAGES}
