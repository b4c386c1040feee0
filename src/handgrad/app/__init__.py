"""The application: the ``handgrad`` command line (``cli``, ``commands/``), run assembly
(``run``), reports, plots and benchmarks. The only layer that uses rich and matplotlib."""
