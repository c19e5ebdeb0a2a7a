"""The command-line layer: what turns flags and YAML into a recipe run.

- :mod:`ssl_siamese.cli.lightning`: the pretraining recipes' LightningCLI (``SSLCLI``) and their ``main``.
- :mod:`ssl_siamese.cli.recipe`: the other recipes' command line, derived from their ``run_X`` signature, with one
  error-to-exit wrapper and the shared ending (loggers closed, ``results.json`` written).
- :mod:`ssl_siamese.cli.arguments`: misspelt-option suggestions and the plain recipe parser.
- :mod:`ssl_siamese.cli.loggers`: W&B (offline unless asked), CSV and TensorBoard loggers.
- :mod:`ssl_siamese.cli.console`: the ``ssl-siamese <recipe>`` console script.

The names of the former ``ssl_siamese/cli.py`` stay importable from here (lazily: a recipe that never trains
does not import Lightning through this package).

Example:
    >>> from ssl_siamese.cli import main, SSLCLI          # what ssl_siamese.recipes.simclr runs
    >>> main(SimCLR, "simclr", ["--trainer.max_epochs", "1", "--log_to", "none"])  # doctest: +SKIP
"""

from ssl_siamese._lazy import lazy_exports

_LIGHTNING = ("SSLArgumentParser", "SSLCLI", "ShortHelpFormatter", "check_option_names", "default_precision",
              "epochs_label", "interrupt_checkpoint", "knn_report", "main", "probe_metrics", "query_split_name",
              "recorded_data", "resume_command")

__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(_LIGHTNING, "ssl_siamese.cli.lightning"))
