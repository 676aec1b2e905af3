"""Infrastructure every part shares: the on-disk cache (:mod:`.cache`), atomic file writes and
reads (:mod:`.fileio`), name tables (:mod:`.registry`), memory measurement (:mod:`.resources`),
argument checks (:mod:`.checks`) and the optional dependencies (:mod:`.extras`)."""
