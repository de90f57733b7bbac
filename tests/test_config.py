"""Settings: defaults, the example file, environment overrides, and one clear error per mistake."""
from pathlib import Path

import pytest

import config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "msante.example.toml"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "msante.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_use_the_fixed_keys(tmp_path):
    s = config.load(data_dir=str(tmp_path / "d"), environ={})
    assert s.domains == ("msante.test",)
    assert s.listen == {"smtp": "127.0.0.1:2525", "submission": "127.0.0.1:5870", "submissions": "127.0.0.1:4650",
                        "imap": "127.0.0.1:1430", "imaps": "127.0.0.1:9930", "https": "127.0.0.1:8443",
                        "hl7": "127.0.0.1:2575"}
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'msante.db'}"
    assert s.issuers == ()


def test_example_file_loads_and_matches_defaults():
    s = config.load(EXAMPLE, environ={})
    assert s.source == str(EXAMPLE)
    assert s.max_message_size == 25 * 1024 * 1024
    assert s.listen["https"] == "127.0.0.1:8443"
    assert s.imap_idle_keepalive == 120
    assert s.job_lease == 60
    assert s.relay_connections == 10


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, '[listen]\nsmtp = "127.0.0.1:25"\n[server]\ndomains = ["a.test"]\n')
    s = config.load(path, environ={"MSANTE_LISTEN__SMTP": "", "MSANTE_SERVER__DOMAINS": '["b.test", "Hôpital.test"]',
                                   "MSANTE_DATABASE__URL": "postgresql+asyncpg://u@h/db"})
    assert s.listen["smtp"] == ""  # disabled
    assert s.domains == ("b.test", "xn--hpital-ixa.test")  # A-label form
    assert s.database_url == "postgresql+asyncpg://u@h/db"


def test_issuers_table(tmp_path):
    path = write(tmp_path, '[auth]\nissuers = [{issuer = "https://psc", audience = "me", '
                           'jwks_url = "https://psc/certs", acr = "eidas1"}]\n')
    (issuer,) = config.load(path, environ={}).issuers
    assert (issuer.issuer, issuer.audience, issuer.jwks_url, issuer.acr) == ("https://psc", "me", "https://psc/certs",
                                                                             "eidas1")


@pytest.mark.parametrize("text, expected", [
    ("[server\n", "not valid TOML"),
    ("[nope]\n", "unknown section [nope]"),
    ("[listen]\nsmpt = \"x:1\"\n", "unknown key listen.smpt"),
    ("[listen]\nsmtp = \"localhost\"\n", "listen.smtp must be \"host:port\""),
    ("[listen]\nimap = 1430\n", "listen.imap must be a str, got int"),
    ("[server]\ndomains = []\n", "server.domains must be a non-empty list"),
    ("[server]\nmax_message_size = true\n", "server.max_message_size must be a int"),
    ("[database]\nurl = \"mysql://x\"\n", "database.url must start with"),
    ("[auth]\nissuers = [{issuer = \"x\", audience = \"y\"}]\n", "needs exactly one of jwks_file or jwks_url"),
    ("[auth]\nissuers = [{issuer = \"x\", audience = \"y\", jwks_file = \"f\", colour = 1}]\n", "unknown keys"),
    ("[auth]\nadmins = [\"bob\"]\n", "auth.admins must be a list of national identifiers"),
    ("[auth]\ntoken_leeway = 9999\n", "auth.token_leeway must be between"),
    ("[imap]\nidle_keepalive = 0\n", "imap.idle_keepalive must be between 1 and 1740"),
    ("[server]\njob_lease = 0\n", "server.job_lease must be between 1 and 3600"),
    ("[relay]\nconnections_per_destination = 0\n", "relay.connections_per_destination must be between 1 and 100"),
])
def test_bad_file_names_file_key_and_expectation(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, environ={})
    assert str(err.value).startswith(str(path)), err.value
    assert expected in str(err.value)


def test_bad_environment_names_the_variable():
    with pytest.raises(config.ConfigError, match="environment MSANTE_LISTEN__IMAP: listen.imap"):
        config.load(environ={"MSANTE_LISTEN__IMAP": "no-port"})
    with pytest.raises(config.ConfigError, match="MSANTE_LISTEN__NOPE names no setting"):
        config.load(environ={"MSANTE_LISTEN__NOPE": "x"})
    with pytest.raises(config.ConfigError, match="MSANTE_SERVER__DOMAINS must be JSON"):
        config.load(environ={"MSANTE_SERVER__DOMAINS": "a.test"})


def test_missing_file():
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load("/nonexistent/msante.toml", environ={})


def test_generated_file_in_data_dir_is_picked_up(tmp_path):
    (tmp_path / "msante.toml").write_text('[server]\ndomains = ["picked.test"]\n')
    assert config.load(data_dir=str(tmp_path), environ={}).domains == ("picked.test",)


def test_hl7_frame_limit_is_bounded_by_the_mail_it_becomes(tmp_path):
    def load(**environ: str) -> config.Settings:
        return config.load(data_dir=str(tmp_path / "d"), environ=environ)
    assert load().hl7_max_frame == 20 * 1024 * 1024
    assert load(MSANTE_HL7__MAX_FRAME="1048576").hl7_max_frame == 1048576
    with pytest.raises(config.ConfigError, match="hl7.max_frame must be between 1024 and server.max_message_size"):
        load(MSANTE_HL7__MAX_FRAME=str(30 * 1024 * 1024))
    assert load(MSANTE_LISTEN__HL7="").listen["hl7"] == ""
