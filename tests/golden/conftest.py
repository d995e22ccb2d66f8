"""The golden-file generators need TRL, which the test suite never imports."""

collect_ignore = [
  "make_golden.py",
  "make_trl_golden.py",
  "make_trl_bco_golden.py",
  "make_trl_options_golden.py",
  "make_trl_kto_golden.py",
]
