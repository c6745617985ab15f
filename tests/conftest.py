import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if FIXTURES not in sys.path:
    sys.path.insert(0, FIXTURES)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test, run with `-m slow`")
