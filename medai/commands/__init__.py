"""Sub-commands of the ``medai`` command line, one module each."""
