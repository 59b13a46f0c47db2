"""The reader in its users' language (issue 21): complete gettext catalogues (English and Simplified
Chinese) checked against the messages extracted from the source now, SI conversions against the
published factors, report styles, dates and numbers by locale, a Chinese demo session with SI units,
the web interface's language, report style and large-text switches, plots in Chinese, and the proof
that what machines read (JSON, FHIR, HL7) does not change with the language or the units."""
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from device.language import units
from device.monitoring.alerts import load_rules
from device.language.i18n import LOCALE_DIR, LOCALES, LanguageError, Words, choose_locale, choose_style, values_in
from device.store.results import ResultStore
from device.web import views
from device.web.app import WebContext, create_app
from device.language.plain import level_words, reference_range, value_text
from labdata import RESULT

ROOT = Path(__file__).resolve().parents[1]
ZH, EN = Words("zh_CN"), Words("en")
PLACEHOLDER = re.compile(r"\{\w*\}|%\(\w+\)s")


def _catalogue(locale: str):
    with (LOCALE_DIR / locale / "LC_MESSAGES" / "stripread.po").open("rb") as fh:
        return read_po(fh, locale=locale)


@pytest.fixture(scope="module")
def extracted() -> set:
    """Every message id in the source as it is now (babel.cfg: Python, templates, the shipped alert rules)."""
    with (ROOT / "babel.cfg").open() as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "words": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {message[2] if isinstance(message[2], str) else tuple(message[2])
                for message in extract_from_dir(str(ROOT), method_map, options_map, keywords=keywords)}


# -- the catalogues ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("locale", LOCALES)
def test_every_message_is_translated_and_no_translation_is_unused(locale, extracted):
    catalogue = _catalogue(locale)
    ids = {m.id for m in catalogue if m.id}
    assert extracted - ids == set(), f"untranslated in {locale}: run the update in babel.cfg and translate"
    assert ids - extracted == set(), f"unused in {locale}: no longer in the source"
    for message in catalogue:
        if not message.id:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(strings) and "fuzzy" not in message.flags, f"{locale}: {message.id!r} has no translation"
        singular = message.id[0] if isinstance(message.id, tuple) else message.id
        for text in strings:                          # a translation keeps every placeholder, and adds none
            assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(singular)), (locale, singular)


def test_plural_forms_follow_each_language():
    assert _catalogue("zh_CN").plural_forms == "nplurals=1; plural=0;"
    assert _catalogue("en").num_plurals == 2
    one, many = "{n} result needs attention", "{n} results need attention"
    assert EN.ngettext(one, many, 1) == one and EN.ngettext(one, many, 2) == many
    assert ZH.ngettext(one, many, 1) == ZH.ngettext(one, many, 3) == "{n} 项结果需要注意"


def test_the_chinese_catalogue_uses_the_words_of_a_chinese_urinalysis_report():
    names = {code: views.plain_name(code, ZH) for code in ("GLU", "PRO", "KET", "BLD", "NIT", "LEU", "BIL", "URO",
                                                           "SG", "PH", "ALB", "CRE")}
    assert names == {"GLU": "葡萄糖", "PRO": "蛋白质", "KET": "酮体", "BLD": "隐血", "NIT": "亚硝酸盐（感染指标）",
                     "LEU": "白细胞", "BIL": "胆红素", "URO": "尿胆原", "SG": "比重", "PH": "酸碱度（pH）",
                     "ALB": "微量白蛋白", "CRE": "肌酐"}


def test_the_language_and_style_come_from_the_configuration(monkeypatch):
    monkeypatch.delenv("STRIPREAD_LANG", raising=False)
    monkeypatch.delenv("STRIPREAD_REPORT_STYLE", raising=False)
    assert (choose_locale(), choose_style()) == ("en", "conventional")
    monkeypatch.setenv("STRIPREAD_LANG", "zh_CN.UTF-8")
    monkeypatch.setenv("STRIPREAD_REPORT_STYLE", "SI")
    assert (choose_locale(), choose_style()) == ("zh_CN", "si")
    assert choose_locale("zh-CN") == "zh_CN" and choose_locale("en") == "en"     # the option wins
    with pytest.raises(LanguageError, match="en, zh_CN"):
        choose_locale("fr")
    with pytest.raises(LanguageError, match="conventional, si, plus"):
        choose_style("metric")


def test_dates_and_numbers_are_written_as_each_locale_writes_them():
    moment = datetime(2026, 12, 1, 14, 5)
    assert ZH.datetime(moment) == "2026年12月1日 14:05" and ZH.date(moment, with_year=False) == "12月1日"
    assert EN.datetime(moment) == "Dec 1, 2026 14:05"
    assert EN.number(5.55, 1) == ZH.number(5.55, 1) == "5.6" and Words("en").number(1234.5, 1) == "1234.5"


# -- units and report styles ---------------------------------------------------------------------------------

# molar masses (g/mol, IUPAC atomic weights) and the factors the laboratory SI tables publish
MOLAR_MASS = {"GLU": 180.156, "BIL": 584.66, "URO": 590.72, "KET": 102.09, "CRE": 113.12}
PUBLISHED = {"GLU": 0.0555, "PRO": 0.01, "BIL": 17.1, "URO": 16.9, "KET": 0.098, "CRE": 0.0884}


@pytest.mark.parametrize("analyte", sorted(PUBLISHED))
def test_si_factors_are_the_published_ones_and_follow_from_the_molar_mass(analyte):
    conversion = units.si(analyte, "mg/dL")
    assert conversion.factor == PUBLISHED[analyte]
    if analyte in MOLAR_MASS:           # mg/dL -> mmol/L is 10 / M; to umol/L a thousand times that
        exact = 10 / MOLAR_MASS[analyte] * (1000 if conversion.unit == "umol/L" else 1)
        assert conversion.factor == pytest.approx(exact, rel=0.005)
    else:
        assert conversion.unit == "g/L"


def test_si_levels_are_the_values_printed_on_chinese_dry_chemistry_reports(product):
    si = Words("en", "si")
    shown = {code: [level_words(product.pad(code), lv.code, si) for lv in product.pad(code).levels]
             for code in ("GLU", "PRO", "URO", "KET", "BIL")}
    assert shown["GLU"] == ["negative", "5.6 mmol/L (1+)", "14 mmol/L (2+)", "28 mmol/L (3+)", "56 mmol/L (4+)",
                            "111 mmol/L (4+)"]
    assert shown["PRO"][2:] == ["0.30 g/L (1+)", "1.0 g/L (2+)", "3.0 g/L (3+)", "20 g/L (4+)"]
    assert shown["URO"][:2] == ["3.4 µmol/L", "17 µmol/L"]          # normal up to 17 umol/L
    assert shown["KET"][1:3] == ["trace (+-)", "small (1+)"] and shown["BIL"][1] == "small (1+)"
    assert reference_range(product.pad("URO"), si) == "3.4 to 17 µmol/L"
    assert value_text(product.pad("GLU"), 883.5, si) == "about 50 mmol/L"       # 49.0 between 27.8 and 55.5
    assert value_text(product.pad("GLU"), 883.5, EN) == "about 900 mg/dL"
    assert value_text(product.pad("PH"), 6.52, si) == "about 6.5"                 # no SI conversion: as it is


def test_the_plus_style_gives_the_grade_first_with_the_si_value(product):
    plus = Words("zh_CN", "plus")
    glucose, nitrite, ph = product.pad("GLU"), product.pad("NIT"), product.pad("PH")
    assert level_words(glucose, "250", plus) == "2+（14 mmol/L）"
    assert level_words(glucose, "neg", plus) == "阴性（-）" and level_words(nitrite, "pos", plus) == "阳性（+）"
    assert level_words(product.pad("PRO"), "trace", plus) == "+-（0.15 g/L）"
    assert level_words(ph, "6.5", plus) == "6.5"                                  # pH has no grade
    assert level_words(product.pad("LEU"), "small", plus) == "1+（70 个/µL）"


def test_every_level_of_the_product_file_has_its_plus_grade_parsed(product):
    for pad in product.pads:
        graded = [lv.plus for lv in pad.levels]
        assert (pad.analyte in ("PH", "SG")) == all(g is None for g in graded), pad.analyte
    assert [lv.plus for lv in product.pad("GLU").levels] == ["-", "1+", "2+", "3+", "4+", "4+"]


# -- alert texts ------------------------------------------------------------------------------------------

def test_every_shipped_alert_is_said_in_chinese_and_the_told_phrase_can_be_taken_out(product):
    rules = load_rules()
    for rule in rules:
        for step in rule.steps:
            english = {"rule_id": rule.id, "severity": step.severity}
            fields = {"condition": "GLU >= 1000", "evidence": "#3 on 2026-12-01 09:15 UTC: GLU 1000", "count": "2",
                      "of_last": "3", "within_days": "90", "analyte": "PRO", "analyte_name": "Protein", "points": "3",
                      "min_rise": "2", "rise": "2", "slope": "1.5"}
            for name in ("title", "message", "advice"):
                english[name] = getattr(step, name).format_map(fields)
            chinese = views.alert_words(rules, english, ZH)
            assert not re.search(r"[A-Za-z]{4,}", re.sub(r"#3 on .* UTC: GLU 1000", "", chinese["title"] +
                                                         chinese["advice"])), chinese
            assert chinese["message"].endswith("#3 on 2026-12-01 09:15 UTC: GLU 1000。")   # evidence kept as raised
            if views._TOLD["en"].search(english["advice"]):
                assert views._TOLD["zh_CN"].search(chinese["advice"]), (rule.id, chinese["advice"])
            if "analyte_name" in getattr(step, "title"):
                assert chinese["title"].startswith("蛋白质")
    edited = {"rule_id": "glucose_high", "severity": "warning", "title": "A clinic's own words",
              "message": "m", "advice": "a"}
    assert views.alert_words(rules, edited, ZH)["title"] == "A clinic's own words"   # not made from the rule


def test_values_are_read_back_from_a_text_made_from_a_template():
    assert values_in("{a} rose {b} levels: {a}", "PRO rose 2 levels: PRO") == {"a": "PRO", "b": "2"}
    assert values_in("{a} rose {b} levels", "something else") is None


# -- the command line ------------------------------------------------------------------------------------

def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "device.cli.commands", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_a_patient_reads_the_whole_demo_session_in_chinese_with_si_units(tmp_path):
    done = _cli("demo", "--lang", "zh_CN", "--units", "si", "--db", str(tmp_path / "r.db"))
    assert done.returncode in (0, 1), done.stderr
    out = done.stdout
    assert "等待放入试纸" in out and "试纸已放入：正在显色" in out and "已完成：已保存为第 1 号记录" in out
    assert "葡萄糖" in out and "下一步：" in out and "已保存为第 1 号记录（" in out
    assert "mmol/L" in out and "mg/dL" not in out
    english = [line for line in out.splitlines() if re.search(r"\b(?:the|read|stored|pads?|level)\b", line)]
    assert english == [], english
    with ResultStore(tmp_path / "r.db") as store:
        stored = store.get(1).result
    assert stored["provenance"]["report_style"] == "si"                 # shown in provenance, values in UCUM
    assert {a["unit"] for a in stored["analytes"] if a["analyte"] == "GLU"} == {"mg/dL"}


def test_an_unknown_language_or_style_is_bad_usage_naming_the_choices(tmp_path):
    done = _cli("demo", "--lang", "fr", "--db", str(tmp_path / "r.db"), timeout=60)
    assert done.returncode == 2 and "choose one of en, zh_CN" in done.stderr
    done = _cli("demo", "--db", str(tmp_path / "r.db"), env={"STRIPREAD_REPORT_STYLE": "metric"}, timeout=60)
    assert done.returncode == 2 and "choose one of conventional, si, plus" in done.stderr


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "strip.jpg"
    done = _cli("simulate", "--out", str(path), "--seed", "4")
    assert done.returncode == 0, done.stderr
    return path


def test_json_and_lab_messages_are_the_same_whatever_the_language_and_units(photo, tmp_path):
    from device.lab.fhir import transaction
    from device.lab.hl7 import oru_message
    from device.lab.config import Hl7Settings, LabConfig
    results = {}
    for lang, style in (("en", "conventional"), ("zh_CN", "si"), ("zh_CN", "plus")):
        done = _cli("read", str(photo), "--json", "--lang", lang, "--units", style, "--db", str(tmp_path / "r.db"))
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["provenance"].pop("report_style") == style        # the style is recorded, nothing else moves
        for key in ("read_at", "captured_at"):
            result["provenance"].pop(key)
        results[(lang, style)] = result
    first = results[("en", "conventional")]
    assert all(result == first for result in results.values())
    human = _cli("read", str(photo), "--lang", "zh_CN", "--units", "si", "--db", str(tmp_path / "r.db")).stdout
    assert "葡萄糖" in human and "mmol/L" in human                    # only the human table speaks Chinese

    with ResultStore(tmp_path / "store.db") as store:
        record = store.add(RESULT, patient_id="P-1")
    config = LabConfig(fhir=None, hl7=None, patient_system="urn:oid:2.16.840.1.113883.19.5")
    hl7 = Hl7Settings("127.0.0.1", 2575, None, receiving_application="LIS", receiving_facility="LAB")
    messages = []
    for style in ("conventional", "si", "plus"):
        shown = dataclasses.replace(record, result={**RESULT, "provenance": {**RESULT["provenance"],
                                                                              "report_style": style}})
        env = {"STRIPREAD_LANG": "zh_CN", "STRIPREAD_REPORT_STYLE": style}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            messages.append((json.dumps(transaction(shown, config), sort_keys=True), oru_message(shown, hl7, config)))
    assert messages[0] == messages[1] == messages[2]
    assert '"unit": "mg/dL"' in messages[0][0] and "mg/dL" in messages[0][1] and "mmol" not in "".join(messages[0])


# -- the web interface ----------------------------------------------------------------------------------

@pytest.fixture
def web(tmp_path, product):
    db = tmp_path / "results.db"
    with ResultStore(db) as store:
        store.add(RESULT, patient_id="P-000123")
    return TestClient(create_app(WebContext(db, product))), db


def test_the_language_switch_is_on_every_page_and_the_page_lang_follows(web):
    client, _ = web
    for path in ("/", "/test", "/history", "/results/1", "/patients/P-000123", "/tech/login"):
        page = client.get(path)
        assert '<html lang="en">' in page.text and 'id="lang-zh_CN"' in page.text and 'id="large-text"' in page.text
    switched = client.get("/display", params={"lang": "zh_CN", "back": "/results/1"}, follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/results/1"
    page = client.get("/results/1")
    assert '<html lang="zh-CN">' in page.text and "项结果需要注意" in page.text and 'id="lang-en"' in page.text
    assert "葡萄糖 250 mg/dL（2+）" in page.text                      # conventional until a style is chosen
    client.get("/display", params={"style": "si", "back": "/"})
    page = client.get("/results/1")
    assert "14 mmol/L（2+）" in page.text and "约 14 mmol/L" in page.text and "mg/dL" not in page.text
    api = client.get("/api/results/1").json()                         # the API stays language-neutral
    assert api["findings"].startswith("White blood cells") and api["result"] == json.loads(json.dumps(RESULT))
    client.get("/display", params={"lang": "en", "back": "/"})
    assert '<html lang="en">' in client.get("/").text


def test_a_switch_returns_only_to_a_page_of_this_reader_and_refuses_an_unknown_language(web):
    client, _ = web
    for back in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        answer = client.get("/display", params={"large": "1", "back": back}, follow_redirects=False)
        assert answer.headers["location"] == "/"
    assert client.get("/display", params={"lang": "fr"}).status_code == 400
    assert client.get("/display", params={"style": "metric"}).status_code == 400


def test_large_text_is_a_setting_of_the_browser_and_a_button_on_every_page(web):
    client, _ = web
    assert 'class="large"' not in client.get("/").text
    client.get("/display", params={"large": "1", "back": "/history"})
    for path in ("/", "/history", "/results/1"):
        page = client.get(path)
        assert '<html lang="en" class="large">' in page.text and "Normal text" in page.text
    client.get("/display", params={"large": "0", "back": "/"})
    assert "Large text" in client.get("/").text


def test_the_device_language_and_style_are_the_pages_default(tmp_path, product):
    db = tmp_path / "results.db"
    with ResultStore(db) as store:
        store.add(RESULT, patient_id="P-000123")
    client = TestClient(create_app(WebContext(db, product, locale="zh_CN", style="plus")))
    page = client.get("/results/1")
    assert '<html lang="zh-CN">' in page.text and "2+（14 mmol/L）" in page.text
    assert "患者 P-000123" in client.get("/patients/P-000123").text


def test_a_trend_plot_and_a_levey_jennings_chart_draw_chinese_with_a_cjk_font(tmp_path):
    from matplotlib import font_manager
    if not any(Path(p).name.startswith("NotoSansCJK") for p in font_manager.findSystemFonts()):
        pytest.skip("Debian's fonts-noto-cjk is not installed (the browser tests install it as root)")
    from device.monitoring.trends import series, trend_png
    with ResultStore(tmp_path / "r.db") as store:
        for glucose in ("100", "250", "500"):
            store.add({**RESULT, "analytes": [dict(a, level=glucose) if a["analyte"] == "GLU" else a
                                              for a in RESULT["analytes"]]}, patient_id="P-1")
        lines = series(list(reversed(store.history("P-1", 10))))
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # a missing glyph is a warning: here, a failure
        trend_png(lines, out, Words("zh_CN", "si"))
    assert out.getvalue().startswith(b"\x89PNG")
