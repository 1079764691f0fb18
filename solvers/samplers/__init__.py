"""The samplers, one family per module. Every module here is imported on first use of the
registry (:func:`solvers.available`, :func:`solvers.get`, :func:`solvers.sample`), and each
registers its samplers with ``@register`` where they are defined: a new sampler is a new file
here (or a new function in one of these), and nothing else needs editing."""
