"""Play inside a run's dream: ``worldmodels play RUN_DIR`` serves a page on which a person
drives M's dream (decoded by V) with the keyboard, beside the real game, at a chosen
temperature, and can hand the wheel to C. See :mod:`worldmodels.play.server` for the page's
protocol and :mod:`worldmodels.play.session` for what one step does."""
