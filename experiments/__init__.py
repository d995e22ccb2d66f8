"""Experiments that fill the results the SLPO paper left open.

Each experiment is a module run with ``python -m experiments.<name>``; it
writes CSV tables and PNG figures to ``docs/figures`` and is described, with
its measured runtime, in ``docs/RESULTS.md``. The loss and log-probability
math comes from :mod:`slpo_jax`; nothing here re-derives it.
"""
