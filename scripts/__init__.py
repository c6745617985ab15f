"""Command-line tools of the repository: thin front ends over :mod:`scripts.core`.

Run them from the repository root as modules, like ``main.py``::

    .venv/bin/python -m scripts.model_table
    .venv/bin/python -m scripts.benchmark --models flatten_swin_t swin_t --batch 16

Each tool's ``--help`` lists its options; ``docs/reproduce.md`` maps the paper's
tables and figures to these commands.
"""
