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
