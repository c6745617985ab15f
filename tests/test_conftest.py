"""tests/conftest.py: a test that hangs fails at its time limit with every thread's traceback, and the
suite goes on to the next test."""
import os
import sys

from cli_runs import Running

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_hanging_test_fails_at_its_limit_and_the_suite_goes_on(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(open(os.path.join(ROOT, "tests", "conftest.py")).read())
    (tests / "test_hang.py").write_text(
        "import threading\n"
        "def test_hangs():\n"
        "    threading.Event().wait()   # waits for ever without the limit\n"
        "def test_next():\n"
        "    pass\n")
    r = Running([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                 "--rootdir", str(tmp_path), str(tests)], FLATTEN_TEST_TIME_LIMIT_S="2").finish(120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "TimeoutError: tests/test_hang.py::test_hangs ran past its time limit of 2 s" in out, out
    assert "in test_hangs" in out and "1 failed, 1 passed" in out, out
