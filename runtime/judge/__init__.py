"""Judgement: the comparator (compare.py), verify (verify.py) and its report (report.py)."""
