"""What the command line runs, one module per command that works on files: ``train``, ``scan``,
``repair``, ``defend``, ``demo``. Each takes the same keyword arguments where they mean the same
thing (``root``, ``device``, ``seed``, ``config``, ``train``, ``clean_fraction``, ``clean_n``) and
returns the record it wrote. The Python API on tensors is :mod:`tacrecon.api`."""
