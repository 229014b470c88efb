"""The generated API page is current, and every public name has a docstring."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_api():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_api"] = module
    spec.loader.exec_module(module)
    return module


def test_api_page_is_current():
    make_api = _make_api()
    assert (ROOT / "docs" / "api.md").read_text() == make_api.render(), "docs/api.md is stale: python docs/make_api.py"


def test_every_public_name_is_documented():
    make_api = _make_api()
    missing = []
    for module_name in make_api.MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not make_api.first_paragraph(obj):
                missing.append(f"{module_name}.{name}")
    assert not missing, missing
