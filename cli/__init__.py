"""The diffcodec command line (installed as the ``diffcodec`` command, import name ``diffcodec_cli``)."""
