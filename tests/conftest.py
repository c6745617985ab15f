"""Shared fixtures. The repository root and tests/fixtures are on the import path (pytest.ini)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


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
