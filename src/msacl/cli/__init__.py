"""The ``msacl`` command line. Each verb lives in its own module with ``add_arguments`` and ``run``."""
