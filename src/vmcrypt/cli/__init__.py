"""The ``vmcrypt`` command line."""
