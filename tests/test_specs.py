import json

import numpy as np
import pytest

from calibration.specs import SpecError, builtin_products, load_card, load_product
from tests.conftest import SHARED_SPEC



def _shipped(rel: str):
    from importlib import resources
    package, _, rest = rel.partition("/")
    return (resources.files(package) / rest).read_bytes()


@pytest.mark.parametrize("shipped,spec", [
    ("calibration/data/cards/card-v1.json", "cards/card-v1.json"),
    ("calibration/data/products/generic-10.json", "products/generic-10.json"),
    ("calibration/data/products/acr-2.json", "products/acr-2.json"),
    ("device/data/read-output.schema.json", "read-output.schema.json"),
])
def test_shipped_defaults_are_identical_copies_of_the_contracts(shipped, spec):
    if not SHARED_SPEC.is_dir():
        pytest.skip("the team's shared/spec is not beside this checkout")
    assert _shipped(shipped) == (SHARED_SPEC / spec).read_bytes()


def test_builtin_card_geometry(card):
    assert card.id == "card-v1" and len(card.patches) == 24
    assert sum(p.role == "neutral" for p in card.patches) == 5
    assert np.allclose(card.slot_to_card([0.0, 108.0]), [[16, 25], [124, 25]])
    assert np.allclose(card.slot_to_card(10.0, 2.0), [26, 27])   # across: to the right of +x is +y


def test_builtin_products_are_listed_and_load():
    assert {"generic-10", "acr-2"} <= set(builtin_products())
    product = load_product("generic-10")
    assert [p.analyte for p in product.pads][:3] == ["LEU", "NIT", "URO"]
    assert product.pad("GLU").levels[0].code == "neg"
    assert not product.pad("NIT").quantitative and product.pad("GLU").quantitative
    assert product.pad("PH").level_lab.shape == (7, 3)


def test_product_from_a_path(tmp_path):
    doc = json.loads(_shipped("calibration/data/products/acr-2.json"))
    doc["id"] = "acr-local"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert load_product(path).id == "acr-local"


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("pads"), "'pads'"),
    (lambda d: d.update(schema="stripread.product/9"), "not a stripread.product/1"),
    (lambda d: d["pads"][0].pop("center_mm"), "pads[0]: missing key 'center_mm'"),
    (lambda d: d["pads"][0].update(levels=d["pads"][0]["levels"][:1]), "at least two chart levels"),
])
def test_malformed_product_is_refused_naming_the_problem(tmp_path, mutate, message):
    doc = json.loads(_shipped("calibration/data/products/generic-10.json"))
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_product(path)


def test_malformed_card_and_unreadable_files(tmp_path):
    doc = json.loads(_shipped("calibration/data/cards/card-v1.json"))
    doc["markers"]["centers_mm"] = doc["markers"]["centers_mm"][:3]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="exactly four markers"):
        load_card(tmp_path / "c.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SpecError, match="not readable JSON"):
        load_card(tmp_path / "junk.json")
    with pytest.raises(SpecError, match="no such file"):
        load_product(tmp_path / "missing.json")
