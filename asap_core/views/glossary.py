"""Plain-language explanations of the app's terms, shown as tooltips (``help=``) on the pages.

One dict, ``GLOSSARY``, so a term reads the same everywhere; pages import it (``GLOSSARY["p_fake"]``).
"""
from __future__ import annotations

from ..storage.schema import DECISION_THRESHOLD, N_DIMS

GLOSSARY: dict[str, str] = {
    "p_fake": (f"The detector's probability that the image is AI-generated (0 = surely real, 1 = surely fake). "
               f"From {DECISION_THRESHOLD} up the image is predicted fake."),
    "confidence": ("How sure the detector is: 0 when p_fake is exactly on the decision threshold, 1 when p_fake "
                   "is 0 or 1."),
    "dimension": (f"One of the {N_DIMS} numbers the detector reduces each image to before deciding. Each "
                  "dimension pushes the decision towards fake or real with its weight w2."),
    "relevance map": ("A heat map over the image: the regions that raised this score most are red. It shows "
                      "where the detector looked, not why."),
    "concept": ("A kind of image region that recurs across the selected images (found by grouping the regions "
                "the detector relied on). Each concept shows its typical crops."),
    "pattern": ("A named set of images and, per image, the regions that matter. Its impact is how much p_fake "
                "drops when those regions are painted out, compared with painting out random regions."),
    "cell": ("Images that lie close together on the map of the detector's dimensions share a cell; each pie "
             "is one cell."),
    "grid": "How many cells per side the map is cut into: fewer cells means bigger pies with more images each.",
    "map checks": ("Tests of whether a relevance map follows what this model uses (not whether the pattern is a "
                   "real artifact). Faithfulness: blur out the image's patches in the map's order and watch the "
                   "score fall; a faithful map makes it fall faster than random orders (\"2x less left than "
                   "random\", with a 95% interval). Occlusion: does the map rank the patches as blurring each one "
                   "alone does? Sanity check: redraw the model's weights, layer by layer, and recompute the map; a "
                   "map that barely changes, or is the same for every dimension, is flagged."),
    "overview pie": ("Area = number of images in the cell; blue = real, orange = fake, grey = unlabelled; "
                     "hatched slices = images the detector got wrong; faint pies = low mean confidence."),
}

__all__ = ["GLOSSARY"]
