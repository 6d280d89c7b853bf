"""Config parsing: the shipped .dist equals the defaults; bad values stop
start-up with one line naming section and key; the twistd plugin prints it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from scriptgen.emulate.config import Config, ConfigError, PortSpec, load_config

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "etc" / "scriptgen.ini.dist"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.ini"
    path.write_text(text)
    return path


def test_dist_file_documents_exactly_the_defaults() -> None:
    config = load_config(DIST)
    assert dataclasses.replace(config, source="<defaults>") == Config()


def test_every_key_is_in_the_dist_file() -> None:
    text = DIST.read_text()
    keys = [
        f.name for f in dataclasses.fields(Config) if f.name not in ("proxy", "limits", "source")
    ]
    keys += [f.name for f in dataclasses.fields(Config().proxy)]
    keys += [f.name for f in dataclasses.fields(Config().limits)]
    for key in keys:
        assert f"\n{key} =" in text, key


def test_ports_and_values_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[scriptgen]\nports = tcp/139, udp/53 ,tcp/21=2121 ; inline comment\nlisten = 127.0.0.2\n"
        "events =\non_unmatched = CLOSE\n[proxy]\nenabled = yes\npool = 127.0.0.5, 127.0.0.6\n"
        "[limits]\nidle_timeout = 0.5\nmax_connections = 3\n",
    )
    c = load_config(path)
    assert c.ports == (
        PortSpec("tcp", 139, 139),
        PortSpec("udp", 53, 53),
        PortSpec("tcp", 21, 2121),
    )
    assert c.listen == "127.0.0.2" and c.events is None and c.on_unmatched == "close"
    assert c.proxy.enabled and c.proxy.pool == ("127.0.0.5", "127.0.0.6")
    assert c.limits.idle_timeout == 0.5 and c.limits.max_connections == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.listen = "0.0.0.0"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nidle_timeout = abc\n", "[limits] idle_timeout: not a number: 'abc'"),
        ("[limits]\nmax_connections = 0\n", "[limits] max_connections: must be at least 1: '0'"),
        ("[limits]\nmax_connections = 2.5\n", "[limits] max_connections: not an integer: '2.5'"),
        ("[limits]\nidle_timeout = nan\n", "[limits] idle_timeout: not a finite number"),
        ("[limits]\nidle_timout = 3\n", "[limits] idle_timout: unknown key"),
        ("[limit]\nx = 1\n", "[limit]: unknown section"),
        ("[scriptgen]\nlisten = localhost\n", "[scriptgen] listen: not an IP address: 'localhost'"),
        ("[scriptgen]\nports = tcp/99999\n", "[scriptgen] ports: port out of range: '99999'"),
        (
            "[scriptgen]\nports = sctp/9\n",
            "[scriptgen] ports: expected tcp/PORT or udp/PORT[=SERVED]",
        ),
        ("[scriptgen]\nports = tcp/1=80, tcp/2=80\n", "[scriptgen] ports: tcp/80 is served twice"),
        ("[scriptgen]\nports =\n", "[scriptgen] ports: no ports listed"),
        (
            "[scriptgen]\non_unmatched = maybe\n",
            "[scriptgen] on_unmatched: must be one of silent, close",
        ),
        ("[scriptgen]\nmodel_dir =\n", "[scriptgen] model_dir: must not be empty"),
        ("[proxy]\nenabled = true\n", "[proxy] pool: must list hosts when enabled = true"),
        ("[proxy]\nenabled = perhaps\n", "[proxy] enabled: not a boolean"),
        (
            "[proxy]\npool = 10.0.0.5, example.com\n",
            "[proxy] pool: not an IP address: 'example.com'",
        ),
        ("no section header\n", "not a valid ini file"),
        ("[limits]\nidle_timeout = 1\nidle_timeout = 2\n", "not a valid ini file"),
    ],
)
def test_bad_values_name_section_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = str(info.value)
    assert line.startswith(f"config {path}: ")
    assert message in line
    assert "\n" not in line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "absent.ini")


def test_plugin_prints_one_line_and_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from twisted.plugins.scriptgen_plugin import Options, serviceMaker

    path = write(tmp_path, "[limits]\nidle_timeout = abc\n")
    options = Options()
    options.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit) as info:
        serviceMaker.makeService(options)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"scriptgen: config {path}: [limits] idle_timeout: not a number: 'abc'\n"


def test_plugin_reports_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twisted.plugins.scriptgen_plugin import Options, serviceMaker

    models = tmp_path / "models"
    models.mkdir()
    path = write(tmp_path, f"[scriptgen]\nmodel_dir = {models}\nports = tcp/21=0\nevents =\n")
    options = Options()
    options.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit):
        serviceMaker.makeService(options)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[scriptgen] ports: no model for tcp/21" in err
