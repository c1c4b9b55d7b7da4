"""What a visitor's on-demand work costs, in the hosted budget's unit: **images with new relevance maps**
(``hosting.HostedPolicy.charge_relevance``; ``ASAP_RELEVANCE_BUDGET`` per visitor and day). The one place
work is priced: ``glue.data.charged_work`` charges what these functions return, ``views.checks`` and the
pages only say it.

One map is a forward and a batched backward pass, counted as :data:`MAP_PASSES` forward passes; work made of
other passes (the explanation checks, ranking words) is converted at that rate, rounded up. Work that computes
no relevance map and only a few forward passes per image (laundering without maps, pattern impacts,
concepts) is not charged; it still waits for a work slot. Uploads of whole image sets are charged apart,
in images and bytes (``glue.budget.charge_upload``). No Streamlit here.
"""
from __future__ import annotations

import math

from ..analyses.explanation_checks import DEFAULT_RANDOM, DEFAULT_STEPS
from ..method.sanity import DEFAULT_SEEDS

#: forward passes one relevance map costs (forward + batched VJP), the rate other passes are converted at
MAP_PASSES = 3
#: what the charge assumes of the CLIP before it is loaded: ViT-B/32 (49 patches, 12 blocks)
ASSUMED_PATCHES = 49
ASSUMED_BLOCKS = 12
#: words whose text-tower pass costs about one relevance-map image (a ~16-token text forward against the
#: forward and batched backward of a map over 50+ image tokens)
WORDS_PER_MAP = 10


def as_maps(passes: int) -> int:
    """``passes`` forward passes in map images, rounded up."""
    return math.ceil(int(passes) / MAP_PASSES)


def maps_cost(n_missing: int) -> int:
    """Relevance maps of ``n_missing`` images not in the bundle's store yet."""
    return max(0, int(n_missing))


def forwards_per_image(n_targets: int, steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM,
                       n_patches: int = ASSUMED_PATCHES) -> int:
    """Forward passes of one image's faithfulness checks for ``n_targets`` targets (at most; see
    ``method.faithfulness``): curves ``2 + 2 (steps - 1) (K + 2 n_random)`` plus the occlusion effects ``P + 1``."""
    return 2 + 2 * (int(steps) - 1) * (int(n_targets) + 2 * int(n_random)) + int(n_patches) + 1


def checks_cost(n_faithfulness: int, n_targets: int, n_sanity: int, n_missing_maps: int = 0,
                n_blocks: int = ASSUMED_BLOCKS) -> int:
    """The explanation checks: the curves and occlusion of ``n_faithfulness`` images over ``n_targets``
    targets, the sanity check of ``n_sanity`` images (``DEFAULT_SEEDS`` redraws of a cascade of
    ``1 + n_blocks`` recomputed maps each) and the ``n_missing_maps`` maps under test not stored yet."""
    passes = (int(n_faithfulness) * forwards_per_image(n_targets)
              + int(n_sanity) * DEFAULT_SEEDS * (1 + int(n_blocks)) * MAP_PASSES)
    return as_maps(passes) + maps_cost(n_missing_maps)


def words_cost(n_words: int) -> int:
    """Ranking ``n_words`` uncached words with CLIP's text tower (at least 1)."""
    return max(1, -(-int(n_words) // WORDS_PER_MAP))


def laundering_cost(n_images: int, n_settings: int, n_missing_maps: int, with_maps: bool) -> int:
    """A laundering table of ``n_images`` x ``n_settings``: with ``with_maps`` the map of every laundered image
    and the originals' maps not stored yet (``n_missing_maps``); without, nothing (no map computed)."""
    return int(n_images) * int(n_settings) + maps_cost(n_missing_maps) if with_maps else 0


def laundered_view_cost(n_missing_maps: int) -> int:
    """One image before and after laundering: the laundered image's maps and the original's, if not stored."""
    return 1 + maps_cost(n_missing_maps)


#: one uploaded image on the Single image page: its embedding and its 17 maps
UPLOAD_VIEW_COST = 1
