"""Shared fixtures: the built-in card and products, and where the team's interface specs live."""
from pathlib import Path

import pytest

from calibration.specs import load_card, load_product

SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"


@pytest.fixture(autouse=True)
def private_data_folder(tmp_path, monkeypatch):
    """No test writes to the user's real results database, or reads or writes the user's cache."""
    monkeypatch.setenv("STRIPREAD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("STRIPREAD_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def card():
    return load_card()


@pytest.fixture(scope="session")
def product():
    return load_product()


@pytest.fixture(scope="session")
def acr_product():
    return load_product("acr-2")


@pytest.fixture(scope="session")
def lab_ca():
    """A certificate authority made for this test run: it signs the loopback lab peers' server
    certificates and the reader's client certificate (`ca.cert_pem.write_to_path(...)` for a CA file)."""
    import trustme
    return trustme.CA()
