"""Shared fixtures for the tl_inversion test suite.

The suite runs under several TransformerLens versions (see ``tests/run_all.sh``, which
exports ``TL_INVERSION_ENV`` = tl39 / tl43 / tl218). Model builders live in
``tests/helpers.py`` (importable from tests as ``helpers``); see its docstring for how
each variant is built offline on each TL version.

Fixtures:
  tl_version          installed transformer-lens version tuple, e.g. (3, 9, 0)
  tl_env              value of TL_INVERSION_ENV (None when pytest is run directly)
  tiny_cfg            dict with the tiny model shape (HookedTransformerConfig names)
  tiny_model          parametrized over every model class in this env:
                        "hooked"        HookedTransformer            (TL < 4)
                        "bridge-raw"    TransformerBridge, HF weights (TL >= 3)
                        "bridge-compat" same + enable_compatibility_mode() (TL >= 3)
                      fresh per test, random init with a fixed seed, eval mode, CPU.
  tiny_model_variant  the id of the current tiny_model variant
  paper_counting_dir  the paper's counting checkpoint dir, or skip
Module-level names (``from conftest import ...`` or better ``from helpers import ...``):
  HAS_HOOKED, HAS_BRIDGE, TL_VERSION, tl_version()
"""

from __future__ import annotations

import os
from pathlib import Path

# No hub in CI (network reaches package registries only): fail fast instead of hanging on
# retries. Set HF_HUB_OFFLINE=0 explicitly to allow downloads when running locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from helpers import (  # noqa: E402,F401  (re-exported for tests)
    HAS_BRIDGE,
    HAS_HOOKED,
    SEED,
    TINY_CFG,
    TL_VERSION,
    build_bridge,
    build_hf_gpt2,
    build_hooked,
    build_tokenizer,
    build_variant,
    model_variants,
    tl_version,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_VARIANTS = model_variants()


def pytest_report_header(config):
    return (
        f"tl_inversion env: TL_INVERSION_ENV={os.environ.get('TL_INVERSION_ENV')} "
        f"transformer-lens={'.'.join(map(str, TL_VERSION))} "
        f"HAS_HOOKED={HAS_HOOKED} HAS_BRIDGE={HAS_BRIDGE} tiny_model variants={TINY_MODEL_VARIANTS}"
    )


@pytest.fixture(name="tl_version", scope="session")
def tl_version_fixture() -> tuple[int, ...]:
    return TL_VERSION


@pytest.fixture(scope="session")
def tl_env() -> str | None:
    return os.environ.get("TL_INVERSION_ENV")


@pytest.fixture
def tiny_cfg() -> dict:
    """Tiny model shape; a fresh copy per test (safe to mutate)."""
    return dict(TINY_CFG)


@pytest.fixture(params=TINY_MODEL_VARIANTS or [None], ids=TINY_MODEL_VARIANTS or ["no-model-class"])
def tiny_model_variant(request) -> str:
    if request.param is None:
        pytest.skip("neither HookedTransformer nor TransformerBridge is importable")
    return request.param


@pytest.fixture
def tiny_model(tiny_model_variant, tiny_cfg):
    """A tiny random-init model of every class available here (see module docstring)."""
    return build_variant(tiny_model_variant, tiny_cfg, seed=SEED)


@pytest.fixture(scope="session")
def paper_counting_dir() -> Path:
    env = os.environ.get("TL_INVERSION_PAPER_COUNTING")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "models" / "paper_counting"
    if not path.is_dir():
        pytest.skip(f"paper counting checkpoint not found at {path}; set TL_INVERSION_PAPER_COUNTING")
    return path


# Paper-scale checks (the 390,000-input accuracy of the paper's counting model, the patching
# subsets) and notebook execution are marked ``slow``: tests/run_all.sh runs them in one
# environment only (tl39) and the others with ``-m "not slow"``.
_SLOW_FILES = ("test_demos.py",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses_paper_model = "paper_counting_dir" in getattr(item, "fixturenames", ())
        if uses_paper_model or item.get_closest_marker("paper") or item.path.name in _SLOW_FILES:
            item.add_marker(pytest.mark.slow)
