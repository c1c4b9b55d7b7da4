"""``analyze`` as named stages (folder -> bundle) and the built-in demo bundle."""
