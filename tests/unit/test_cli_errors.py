"""Whatever goes wrong inside `watchdogctl`, the operator gets one line and no traceback."""

from __future__ import annotations

import pytest

from watchdog import cli


def test_an_unexpected_error_is_one_masked_line_with_its_own_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("lost postgresql://wd:hunter2@db/app\nsecond line")

    monkeypatch.setattr(cli.base, "load_settings", broken)
    monkeypatch.setattr("sys.argv", ["watchdogctl", "status"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 70
    assert err.count("\n") == 1
    assert err.startswith("watchdogctl: internal error (RuntimeError: lost postgresql://wd:")
    assert "hunter2" not in err
    assert "Traceback" not in err
