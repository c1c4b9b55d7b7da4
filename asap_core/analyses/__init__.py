"""On-demand analyses of an open bundle: concepts, patterns and their impact, laundering, generators, one upload."""
