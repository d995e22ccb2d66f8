"""The golden-file generator needs TRL, which the test suite never imports."""

collect_ignore = ["make_golden.py"]
