"""Shared fixtures and the per-test time limit. The repository root and tests/fixtures are on the import
path (pytest.ini)."""
import faulthandler
import os
import signal
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# No test may hang the suite: past its limit (set-up of the fixtures it needs included) a test fails with
# the tracebacks of every thread. The longest default test takes about a minute on 2 cores.
TIME_LIMIT_S = int(os.environ.get("FLATTEN_TEST_TIME_LIMIT_S", 600))
SLOW_TIME_LIMIT_S = 3600


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = SLOW_TIME_LIMIT_S if item.get_closest_marker("slow") else TIME_LIMIT_S

    def expired(signum, frame):
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (AttributeError, ValueError, OSError):   # a stderr without a file descriptor
            pass
        raise TimeoutError(f"{item.nodeid} ran past its time limit of {limit} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# A tiny FLatten-DeiT for the attention tools: 6 x 6 patch grid (N = 36 > d = 16), 2 blocks.
TINY_DEIT = ["--cfg", "configs/flatten_deit_t.yaml", "--opts", "DATA.IMG_SIZE", "96", "MODEL.EMBED_DIM", "48",
             "MODEL.NUM_HEADS", "[3]", "MODEL.DEPTHS", "[2]"]


@pytest.fixture
def tiny_deit_args():
    """Arguments of an attention tool that choose :data:`TINY_DEIT` (``--opts`` last)."""
    return list(TINY_DEIT)


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    """A real photo (scikit-image's cat, 300 x 451) as a PNG file."""
    from PIL import Image
    from skimage import data
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return str(path)
