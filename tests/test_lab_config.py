"""The lab configuration's checks (device.lab.config.load_config): credentials in a URL refused without
echoing them, every key's type and range, every named file usable (a CA file must hold
certificates); each mistake a `LabConfigError` naming its key, and `stripread sync` exit 2 with
one line, never an internal error. Fuzzed with random values under every key."""
from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.cli.commands import main
from device.lab.config import _SCHEMA, LabConfig, LabConfigError, load_config, parse_config

PASSWORD = "S3cretPass"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, lab_ca):
    """A configuration folder with a CA bundle, a client certificate and key, a token, a non-PEM file."""
    path = tmp_path_factory.mktemp("lab")
    lab_ca.cert_pem.write_to_path(str(path / "ca.pem"))
    client = lab_ca.issue_cert("reader-0042")
    client.cert_chain_pems[0].write_to_path(str(path / "reader.pem"))
    client.private_key_pem.write_to_path(str(path / "reader.key"))
    lab_ca.issue_cert("someone-else").private_key_pem.write_to_path(str(path / "other.key"))
    (path / "token").write_text("t0ken\n")
    (path / "notes.txt").write_text("not a certificate\n")
    (path / "empty.pem").write_text("")
    (path / "sub").mkdir()
    return path


def _load(folder, text: str) -> LabConfig:
    path = folder / "lab.toml"
    path.write_text(text)
    return load_config(path)


FHIR = '[fhir]\nurl = "https://lab.example.org/fhir"\n'
HL7 = '[hl7]\nhost = "lis.example.org"\nport = 2575\n'


def test_a_full_configuration_with_a_client_certificate_loads(folder):
    config = _load(folder, '[lab]\nallow_insecure_loopback = false\ndefault_patient = ""\n'
                           '[sync]\ninterval_s = 30\nbackoff_initial_s = 1.5\nbackoff_max_s = 300\n'
                           + FHIR + 'ca_file = "ca.pem"\nclient_cert = "reader.pem"\nclient_key = "reader.key"\n'
                           'token_file = "token"\ntimeout_s = 10\n' + HL7 + 'ca_file = "ca.pem"\n'
                           'sending_facility = "CLINIC-A"\n')
    assert config.fhir.tls.client_cert == folder / "reader.pem" and config.fhir.timeout_s == 10.0
    assert config.hl7.port == 2575 and config.hl7.tls.ca_file == folder / "ca.pem"
    assert config.interval_s == 30.0 and config.default_patient is None
    assert config.fhir.tls.context() is not None                       # the files really make a context


@pytest.mark.parametrize("url", [f"https://reader:{PASSWORD}@lab.example.org/fhir",
                                 f"https://{PASSWORD}@lab.example.org/fhir",
                                 f"ftp://reader:{PASSWORD}@lab.example.org/fhir",
                                 f"https://lab.example.org/fhir?password={PASSWORD}"])
def test_credentials_in_the_url_are_refused_and_never_echoed(folder, url):
    with pytest.raises(LabConfigError) as caught:
        _load(folder, f'[fhir]\nurl = "{url}"\n')
    message = str(caught.value)
    assert "[fhir] url" in message and "their own files" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("text,named", [
    (FHIR + 'ca_file = ""\n', "[fhir] ca_file must be non-empty text"),
    (FHIR + 'ca_file = "/dev/null"\n', "[fhir] ca_file: /dev/null is not a readable file"),
    (FHIR + 'ca_file = "notes.txt"\n', "[fhir] ca_file: "),
    (FHIR + 'ca_file = "empty.pem"\n', "is not a certificate bundle"),
    (FHIR + 'ca_file = "sub"\n', "[fhir] ca_file: "),
    (FHIR + 'ca_file = "missing.pem"\n', "[fhir] ca_file: cannot use"),
    (FHIR + 'ca_file = 7\n', "[fhir] ca_file must be non-empty text, not 7"),
    (FHIR + 'token_file = "nowhere"\n', "[fhir] token_file: cannot use"),
    (FHIR + 'client_cert = "reader.pem"\nclient_key = "other.key"\n', "[fhir] client_cert / client_key"),
    (FHIR + 'client_key = "reader.key"\n', "[fhir] client_key needs client_cert"),
    (FHIR + 'timeout_s = "fast"\n', "[fhir] timeout_s must be a number of seconds"),
    (FHIR + 'timeout_s = -1\n', "not -1"),
    (FHIR + 'timeout_s = inf\n', "not inf"),
    (FHIR + 'timeout_s = nan\n', "not nan"),
    (FHIR + 'username = ""\npassword_file = "token"\n', "[fhir] username must be non-empty text"),
    ('[fhir]\nurl = 5\n', "[fhir] url must be non-empty text, not 5"),
    ('[fhir]\nurl = "https://lab:abc/fhir"\n', "[fhir] url is not a valid URL"),
    ('[hl7]\nhost = "lis"\nport = "abc"\n', "[hl7] port must be a port number from 1 to 65535, not text"),
    ('[hl7]\nhost = "lis"\nport = 70000\n', "not 70000"),
    ('[hl7]\nhost = "lis"\nport = 0\n', "[hl7] port"),
    ('[hl7]\nhost = "lis"\nport = true\n', "not true/false"),
    ('[hl7]\nhost = "lis"\nport = 2575.0\n', "not 2575.0"),
    ('[hl7]\nhost = "https://lis/"\nport = 2575\n', "[hl7] host must be a host name"),
    ('[hl7]\nhost = ["lis"]\nport = 2575\n', "[hl7] host must be non-empty text, not a list"),
    (HL7 + 'tls = "false"\n', "[hl7] tls must be true or false"),
    (HL7 + 'sending_facility = 3\n', "[hl7] sending_facility must be text"),
    ('[lab]\nallow_insecure_loopback = "false"\n' + FHIR, "[lab] allow_insecure_loopback must be true or false"),
    ('[lab]\npatient_identifier_system = 1979-05-27\n' + FHIR, "not a date or time"),
    ('[sync]\nbackoff_initial_s = 900\n' + FHIR, "backoff_initial_s is longer than backoff_max_s"),
    ('[sync]\ninterval_s = {}\n' + FHIR, "[sync] interval_s must be a number of seconds"),
])
def test_each_mistake_is_a_configuration_error_naming_its_key(folder, text, named):
    with pytest.raises(LabConfigError) as caught:
        _load(folder, text)
    assert named in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text,named", [
    (f'[fhir]\nurl = "https://reader:{PASSWORD}@lab.example.org/fhir"\n', "[fhir] url"),
    (FHIR + 'ca_file = ""\n', "[fhir] ca_file"),
    (FHIR + 'ca_file = "/dev/null"\n', "[fhir] ca_file"),
    ('[hl7]\nhost = "lis"\nport = "abc"\n', "[hl7] port"),
])
def test_sync_says_it_in_one_line_with_the_usage_exit_code(folder, tmp_path, capsys, text, named):
    (folder / "lab.toml").write_text(text)
    code = main(["sync", "--lab-config", str(folder / "lab.toml"), "--db", str(tmp_path / "results.db")])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named in err and "internal" not in err
    assert PASSWORD not in out + err


def test_a_configuration_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "lab.toml")
    with pytest.raises(LabConfigError, match="not a regular file"):
        load_config(tmp_path / "lab.toml")


# -- fuzzing: random values under every key, mixed with plausible ones so the checks go deep

SCALARS = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=30)
           | st.datetimes() | st.dates() | st.times())
TOML_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
PLAUSIBLE = st.sampled_from(["ca.pem", "reader.pem", "reader.key", "other.key", "token", "notes.txt", "sub",
                             "empty.pem", "", "/dev/null", "/dev/zero", "a\x00b", "x" * 300, "localhost",
                             "127.0.0.1", "::1", "lis.example.org", "https://lab.example.org/fhir",
                             "http://127.0.0.1:8080/fhir", f"https://u:{PASSWORD}@lab/fhir",
                             f"https://{PASSWORD}@[::1]:99999/", "https://[::1/", "mllp://lis:2575"])
NUMBERS = st.sampled_from([0, 1, 2575, 65535, 65536, -1, 0.5, 86400, 86401, math.inf, math.nan, True])


VALID = {"lab": {"patient_identifier_system": "urn:oid:1.2.3", "default_patient": "P-1",
                 "allow_insecure_loopback": True},
         "sync": {"interval_s": 60, "backoff_initial_s": 2, "backoff_max_s": 600},
         "fhir": {"url": "https://lab.example.org/fhir", "ca_file": "ca.pem", "client_cert": "reader.pem",
                  "client_key": "reader.key", "token_file": "token", "timeout_s": 15},
         "hl7": {"host": "lis.example.org", "port": 2575, "tls": True, "ca_file": "ca.pem", "timeout_s": 15.0,
                 "sending_application": "STRIPREAD", "sending_facility": "", "receiving_application": "LIS",
                 "receiving_facility": "LAB"}}


@st.composite
def configurations(draw):
    """A valid configuration with a few keys set to random values or left out (now and then a
    misspelt key or table)."""
    tables = draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, unique=True))
    raw = {table: dict(VALID[table]) for table in tables}
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(tables))
        key = draw(st.sampled_from(sorted(_SCHEMA[table]) + ["typo"]))
        if draw(st.integers(0, 4)) == 0:
            raw[table].pop(key, None)
        else:
            raw[table][key] = draw(PLAUSIBLE | NUMBERS | TOML_VALUES)
    if draw(st.integers(0, 20)) == 0:
        raw["fihr"] = {}
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_fuzz_any_values_give_a_valid_configuration_or_a_named_error(folder, raw):
    try:
        config = parse_config(raw, folder / "lab.toml")
    except LabConfigError as exc:
        message = str(exc)
        assert message.startswith(str(folder / "lab.toml")) and "\n" not in message
        named_as_a_file = any(PASSWORD in str(value) for table in raw.values() for key, value in table.items()
                              if key != "url")                  # a file's name is said, whatever it is
        assert PASSWORD not in message or named_as_a_file
        return
    assert isinstance(config, LabConfig) and (config.fhir or config.hl7)
    assert config.fhir is None or "@" not in config.fhir.url
    assert config.hl7 is None or 0 < config.hl7.port < 65536
    assert all(0 < s <= 86400 for s in (config.interval_s, config.backoff_initial_s, config.backoff_max_s))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_fuzz_any_file_text_gives_a_configuration_or_an_error(tmp_path, text):
    try:
        _load(tmp_path, text)
    except LabConfigError as exc:
        assert "\n" not in str(exc)

