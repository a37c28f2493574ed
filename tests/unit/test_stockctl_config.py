"""stockctl's settings: the command line beats the environment, which beats the config
file, which beats the default; each setting says where it came from, and a file it names
that cannot be read is refused with the one place to fix it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.stockctl_config import (
    CONFIG_ENV,
    DEFAULT,
    DEFAULT_TARGET,
    MAKE_RUN_MARK,
    ConfigFile,
    ConfigurationError,
    Origin,
    Source,
    config_path,
    credentials,
    load,
    read_config_file,
    render,
    resolve,
    signing_key,
)
from clients.tokens import new_signing_key

NO_FILE = ConfigFile(None, DEFAULT)


def file_with(tmp_path: Path, text: str) -> ConfigFile:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return read_config_file(path, DEFAULT)


@given(
    flag=st.booleans(),
    env=st.booleans(),
    in_file=st.booleans(),
)
def test_the_target_comes_from_the_first_source_that_gives_it(
    flag: bool, env: bool, in_file: bool
) -> None:
    flags = {"target": "flag:1"} if flag else {}
    environ = {"STOCKCORE_TARGET": "env:2"} if env else {}
    file = ConfigFile(Path("/etc/c.toml"), DEFAULT, True, {"target": "file:3"} if in_file else {})

    target = resolve(flags, environ, file).target

    if flag:
        assert (target.value, target.source) == ("flag:1", Source(Origin.FLAG, "--target"))
    elif env:
        assert (target.value, target.source) == ("env:2", Source(Origin.ENV, "STOCKCORE_TARGET"))
    elif in_file:
        assert (target.value, target.source) == ("file:3", Source(Origin.FILE, "/etc/c.toml"))
    else:
        assert (target.value, target.source) == (DEFAULT_TARGET, DEFAULT)


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("ca_file", "STOCKCORE_CA_FILE"),
        ("client_cert", "STOCKCORE_CLIENT_CERT"),
        ("client_key", "STOCKCORE_CLIENT_KEY"),
        ("signing_key", "STOCKCORE_SIGNING_KEY"),
    ],
)
def test_each_path_setting_keeps_the_same_precedence(
    name: str, variable: str, tmp_path: Path
) -> None:
    file = file_with(tmp_path, f'{name} = "from-file.pem"\n')
    every = {name: "/flag.pem"}, {variable: "/env.pem"}

    assert getattr(resolve(*every, file), name).value == Path("/flag.pem")
    assert getattr(resolve({}, every[1], file), name).value == Path("/env.pem")
    from_file = getattr(resolve({}, {}, file), name)
    assert from_file.value == tmp_path / "from-file.pem"
    assert from_file.source == Source(Origin.FILE, str(tmp_path / "config.toml"))
    assert getattr(resolve({}, {}, NO_FILE), name).source == DEFAULT


def test_an_empty_variable_counts_as_unset_and_is_noted(tmp_path: Path) -> None:
    file = file_with(tmp_path, 'target = "file:3"\n')

    config = resolve({}, {"STOCKCORE_TARGET": "", "STOCKCORE_TOKEN": ""}, file)

    assert config.target.value == "file:3"
    assert config.token.value is None
    assert config.empty_variables == ("STOCKCORE_TARGET", "STOCKCORE_TOKEN")


def test_paths_on_the_command_line_or_in_a_variable_are_taken_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    config = resolve({"ca_file": "ca.pem"}, {"STOCKCORE_SIGNING_KEY": "keys/k.json"}, NO_FILE)

    assert config.ca_file.value == tmp_path / "ca.pem"
    assert config.signing_key.value == tmp_path / "keys" / "k.json"


def test_paths_in_the_config_file_are_taken_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    file = file_with(
        tmp_path,
        'ca_file = "tls/ca.pem"\nsigning_key = "/abs/key.json"\ntoken_file = "../up/token"\n',
    )

    config = resolve({}, {}, file)

    assert config.ca_file.value == tmp_path / "tls" / "ca.pem"
    assert config.signing_key.value == Path("/abs/key.json")
    assert config.token.value == tmp_path.parent / "up" / "token"


def test_a_token_file_on_the_command_line_beats_a_token_in_the_environment(
    tmp_path: Path,
) -> None:
    file = file_with(tmp_path, 'token_file = "file-token"\n')
    both = {"STOCKCORE_TOKEN": "env-token", "STOCKCORE_TOKEN_FILE": "/env/token"}

    assert resolve({"token": "/flag/token"}, both, file).token.value == Path("/flag/token")
    assert resolve({}, both, file).token.value == "env-token"
    assert resolve({}, {"STOCKCORE_TOKEN_FILE": "/env/token"}, file).token.value == Path(
        "/env/token"
    )
    assert resolve({}, {}, file).token.value == tmp_path / "file-token"
    assert resolve({}, {}, NO_FILE).token.value is None


def test_plaintext_from_a_variable_may_turn_the_file_s_off(tmp_path: Path) -> None:
    file = file_with(tmp_path, "plaintext = true\n")

    assert resolve({}, {}, file).plaintext.value is True
    assert resolve({}, {"STOCKCORE_PLAINTEXT": "false"}, file).plaintext.value is False
    assert resolve({"plaintext": True}, {"STOCKCORE_PLAINTEXT": "0"}, file).plaintext.value
    with pytest.raises(ConfigurationError, match="STOCKCORE_PLAINTEXT is 'maybe'"):
        resolve({}, {"STOCKCORE_PLAINTEXT": "maybe"}, file)


def test_the_config_file_is_found_by_variable_then_xdg_then_home() -> None:
    named = {CONFIG_ENV: "/srv/stockctl.toml", "XDG_CONFIG_HOME": "/x", "HOME": "/h"}
    assert config_path(named) == (Path("/srv/stockctl.toml"), Source(Origin.ENV, CONFIG_ENV))
    assert config_path({CONFIG_ENV: "none", "HOME": "/h"}) == (
        None,
        Source(Origin.ENV, CONFIG_ENV),
    )
    assert config_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"})[0] == Path(
        "/x/stockcore/config.toml"
    )
    # A relative XDG_CONFIG_HOME is ignored, as the XDG rules say.
    assert config_path({"XDG_CONFIG_HOME": "x", "HOME": "/h"})[0] == Path(
        "/h/.config/stockcore/config.toml"
    )
    assert config_path({"XDG_CONFIG_HOME": "", "HOME": "/h"})[0] == Path(
        "/h/.config/stockcore/config.toml"
    )


def test_no_config_file_where_one_is_looked_for_is_no_error(tmp_path: Path) -> None:
    config = load({}, {"XDG_CONFIG_HOME": str(tmp_path)})

    assert config.file.path == tmp_path / "stockcore" / "config.toml"
    assert not config.file.exists
    assert config.target.source == DEFAULT


def test_a_config_file_named_by_the_variable_must_be_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load({}, {CONFIG_ENV: str(tmp_path / "nope.toml")})

    assert str(tmp_path / "nope.toml") in refused.value.problem
    assert CONFIG_ENV in refused.value.fix


@pytest.mark.parametrize(
    ("text", "problem", "fix"),
    [
        ("target = \n", "is not TOML", "fix it"),
        ('ca = "x"\n', "unknown key 'ca'", "the keys are target, ca_file"),
        ("target = 7\n", "target in", "quoted string"),
        ('target = ""\n', "target in", "quoted string"),
        ('plaintext = "yes"\n', "plaintext in", "plaintext = true"),
        ('[prod]\ntarget = "x"\n', "unknown key 'prod'", "remove it"),
    ],
)
def test_a_config_file_stockctl_cannot_read_is_refused_naming_it(
    text: str, problem: str, fix: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        file_with(tmp_path, text)

    assert problem in refused.value.problem and str(tmp_path) in refused.value.problem
    assert fix in refused.value.fix


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(str.strip)


@given(target=_TEXT, ca_file=_TEXT, plaintext=st.booleans())
def test_a_written_config_file_reads_back_the_same(
    target: str, ca_file: str, plaintext: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("written")
    path = folder / "config.toml"
    absolute = "/" + ca_file.lstrip("/")
    path.write_text(
        render({"target": target, "ca_file": absolute, "plaintext": plaintext}, [MAKE_RUN_MARK[2:]])
    )

    file = read_config_file(path, DEFAULT)

    assert file.values == {
        "target": target,
        "ca_file": os.path.normpath(absolute),
        "plaintext": plaintext,
    }
    assert file.written_by_make_run


def test_only_known_keys_of_their_kind_are_written() -> None:
    with pytest.raises(ValueError, match="not a config file key"):
        render({"token": "secret"})
    with pytest.raises(ValueError, match="not of its kind"):
        render({"plaintext": "yes"})


@pytest.mark.parametrize(
    ("flags", "environ", "in_file", "fix"),
    [
        ({"ca_file": "/gone/ca.pem"}, {}, "", "correct --ca-file"),
        ({}, {"STOCKCORE_CA_FILE": "/gone/ca.pem"}, "", "correct or unset STOCKCORE_CA_FILE"),
        ({}, {}, 'ca_file = "/gone/ca.pem"\n', "correct ca_file in "),
    ],
)
def test_a_missing_ca_file_names_the_setting_that_named_it(
    flags: dict[str, object], environ: dict[str, str], in_file: str, fix: str, tmp_path: Path
) -> None:
    config = resolve(flags, environ, file_with(tmp_path, in_file))

    with pytest.raises(ConfigurationError) as refused:
        credentials(config)

    assert refused.value.problem.startswith("the CA file /gone/ca.pem (")
    assert "no such file" in refused.value.problem
    assert refused.value.fix.startswith(fix)
    assert "\n" not in str(refused.value)


def test_a_missing_file_make_run_wrote_says_make_run_writes_it_anew(tmp_path: Path) -> None:
    file = file_with(tmp_path, render({"ca_file": "/gone/ca.pem"}, [MAKE_RUN_MARK[2:]]))

    with pytest.raises(ConfigurationError) as refused:
        credentials(resolve({}, {}, file))

    assert "start `make run`, which writes that file anew" in refused.value.fix


def test_no_signing_key_anywhere_names_make_run_and_every_way_to_give_one(
    tmp_path: Path,
) -> None:
    config = load({}, {"XDG_CONFIG_HOME": str(tmp_path)})

    with pytest.raises(ConfigurationError) as refused:
        signing_key(config)

    assert "make run" in refused.value.fix
    for way in ("--signing-key", "STOCKCORE_SIGNING_KEY", "signing_key in", str(tmp_path)):
        assert way in refused.value.fix


def test_the_signing_key_option_beats_the_configured_key(tmp_path: Path) -> None:
    chosen, _ = new_signing_key("chosen")
    (tmp_path / "chosen.json").write_text(json.dumps(chosen))
    config = resolve({}, {"STOCKCORE_SIGNING_KEY": "/gone.json"}, NO_FILE)

    assert signing_key(config, str(tmp_path / "chosen.json"))["kid"] == "chosen"
    with pytest.raises(ConfigurationError, match="correct or unset STOCKCORE_SIGNING_KEY"):
        signing_key(config)


def test_an_empty_token_file_says_how_to_fill_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    config = resolve({"token": str(tmp_path / "token")}, {"STOCKCORE_PLAINTEXT": "1"}, NO_FILE)

    with pytest.raises(ConfigurationError) as refused:
        credentials(config)

    assert (
        refused.value.fix == f"write a token into it: stockctl token issue ... > {tmp_path}/token"
    )
