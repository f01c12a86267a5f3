"""Usage errors are one line with exit 2, like every other error; `--version` and `-h` work."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error

from ling_convert import __version__


@pytest.mark.parametrize("args, line", [
    (("convert", "a", "b", "--too", "x"), "error: no such option --too (did you mean --to?)"),
    (("convrt", "a", "b"), "error: no such command convrt (did you mean convert?)"),
    (("config", "shw", "x"), "error: no such command shw (did you mean show?)"),
    (("convert",), "error: missing argument SRC (see `ling-convert convert --help`)"),
    (("bin2st", "a"), "error: missing argument DST (see `ling-convert bin2st --help`)"),
    (("inspect", "a", "b"), "error: got unexpected extra argument"),
    (("quantize", "a", "b", "--block-size", "x"), "error: invalid value for '--block-size'"),
    (("verify", "a", "--tol"), "error: option '--tol' requires an argument"),
])
def test_usage_error_is_one_line(cli, args, line):
    code, out, err = cli(*args)
    assert_one_line_error(code, err)
    assert err.startswith(line), err
    assert not out and "╭" not in err and "Usage:" not in err


def test_version_and_short_help(cli):
    code, out, err = cli("--version")
    assert (code, out.strip(), err) == (0, f"ling-convert {__version__}", "")
    for args in (("-h",), ("--help",), ()):
        code, out, err = cli(*args)
        assert code == 0 and "convert" in out and "bin2st" in out and not err, (args, err)
    code, out, err = cli("inspect", "-h")
    assert code == 0 and "--json" in out and not err
