"""Names shared across pages: session-state keys (plain keys survive page switches) and page files.

``bundle_path`` (str), ``grid`` (int), ``filters`` (``views.overview.Filters``), ``sel_cells`` (list[int]),
``sel_images`` (list[str] full ids), ``method`` (a ``schema.RELEVANCE_METHODS`` name).
"""
from __future__ import annotations

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
# widget keys of the overview that belong to one bundle (dropped when another opens)
BUNDLE_WIDGETS = ("w_grid", "w_label", "w_outcome", "w_gens")

PAGE_FILES = {
    "overview": "app_pages/overview.py",
    "images": "app_pages/images.py",
    "attention": "app_pages/attention.py",
    "dimensions": "app_pages/dimensions.py",
    "patterns": "app_pages/patterns.py",
    "generators": "app_pages/generators.py",
    "robustness": "app_pages/robustness.py",
    "single": "app_pages/single_image.py",
    "quiz": "app_pages/quiz.py",
}
