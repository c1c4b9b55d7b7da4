"""What lives on disk: the bundle schema (``schema``), bundles (``bundle``) and the content-keyed cache (``cache``)."""
