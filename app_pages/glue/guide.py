"""The first visit: "How to read this" (a dialog shown once per session, reopened from the sidebar) and the
message the demo's first load shows while it is prepared (``sidebar.open_demo``)."""
from __future__ import annotations

import streamlit as st

from asap_core.storage.schema import DECISION_THRESHOLD, N_DIMS

from .keys import K_GUIDE_SEEN, W_GUIDE_BTN, W_GUIDE_OK

GUIDE_TITLE = "How to read this"
GUIDE_POINTS: tuple[tuple[str, str], ...] = (
    ("What you see.", "A collection of images, some real photos and some made by AI, as one model sees them. "
     "A small detector was trained on top of that model to tell the two apart; the views show what it relies on."),
    ("A pie is a cell.", "On the Overview map, images the model finds similar sit close together; each pie is a "
     "cell of such images. Its size is how many images it holds; blue is real, orange fake and grey unlabelled "
     "(the label an image came with); hatched slices are images the detector gets wrong (the legend below "
     "the map shows each kind)."),
    ("p_fake is a score, not a verdict.", f"p_fake is the detector's estimate, from 0 to 1, that an image is AI-made; "
     f"above {DECISION_THRESHOLD:g} it counts as fake. Detectors are not 100 % accurate: they miss some fakes, "
     "flag some real photos, and do worse on images unlike the ones they learnt from."),
    ("A dimension is one of the detector's cues.", f"The detector sums up each image in {N_DIMS} numbers, its "
     "dimensions. A dimension has no name of its own: look at the images that score highest and lowest on it "
     "(Dimensions view) to see what it reacts to; a name given to it there shows in every view."),
    ("A relevance map shows where, not why.", "The attention views colour the parts of an image that moved a "
     "score most. They show where the model looked, not what it saw there, and a highlighted region is not "
     "proof that it was edited or generated."),
    ("A concept or pattern is a shared look.", "A concept groups image regions that look alike across many "
     "images (say, smooth skin or a blurred background). Save one as a pattern to measure how much the "
     "detector's score depends on it."),
    ("Where to start.", "Click a pie on the Overview, then look at its images and their attention maps. Try "
     "'Real or AI?' to test your own eye, or bring your own images from the sidebar."),
)
DEMO_INTRO = ("**Preparing the demo** (only the first visit to this explorer does this): its {n} built-in images, "
              "photos and pictures from two small image generators, are each embedded with a small model, then "
              "a detector is trained on them. About half a minute on a laptop; later visits open it at once.")


def guide_text() -> str:
    """The guide as markdown: one bold lead and a sentence or three per point."""
    return "\n\n".join(f"**{lead}** {text}" for lead, text in GUIDE_POINTS)


@st.dialog(GUIDE_TITLE, width="large")
def guide_dialog() -> None:
    """The guide in a dialog; "Got it" (or the corner x) closes it."""
    st.markdown(guide_text())
    if st.button("Got it", key=W_GUIDE_OK, type="primary"):
        st.rerun()


def first_visit() -> bool:
    """Open the guide on a session's first page with a bundle; True when it opened now."""
    if st.session_state.get(K_GUIDE_SEEN):
        return False
    st.session_state[K_GUIDE_SEEN] = True
    guide_dialog()
    return True


def guide_button() -> None:
    """The sidebar's "How to read this" button: reopens the guide (and counts as its first visit)."""
    if st.button(GUIDE_TITLE, key=W_GUIDE_BTN, icon=":material/help:"):
        st.session_state[K_GUIDE_SEEN] = True  # first_visit, later in this run, must not open a second dialog
        guide_dialog()


def demo_intro(n_images: int) -> str:
    """The first-load message: what is being prepared and about how long it takes."""
    return DEMO_INTRO.format(n=f"{n_images:,}")
