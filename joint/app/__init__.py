"""The application around the method: the ``cctr`` command line, the pipeline stages that the
demo, the benchmark and the scripts share, figures and reports."""
