"""The CLI maps every notebook stage to an importable function and reports user errors in one
line (``error: ...``, exit status 2) while bugs keep their tracebacks."""

from __future__ import annotations

import argparse
import re
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmlens import cli
from mmlens.artifacts import NOTEBOOKS
from mmlens.config import Config
from mmlens.errors import UserError
from mmlens.net import RetryPolicy
from mmlens.sample import Fault, ensure_world, serve

HEX32 = r"[0-9a-f]{32}"


def test_every_numbered_stage_has_a_command() -> None:
    assert set(cli.STAGES) == set(NOTEBOOKS) - {"00"}


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_stage_functions_import(stage: str) -> None:
    assert callable(cli.stage_function(stage))


def test_parse_option() -> None:
    assert cli.parse_option("batch_size=16") == ("batch_size", 16)
    assert cli.parse_option("shard=(0, 2)") == ("shard", (0, 2))
    assert cli.parse_option("model_id=bert-base-uncased") == ("model_id", "bert-base-uncased")
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_option("no-equals")


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's error line: the last line of stderr (progress bars may come before it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert line.startswith("error: "), err
    return line


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_missing_input_is_one_line_naming_the_notebook(tmp_path: Path, capsys) -> None:
    assert cli.main(["05", "--data-dir", str(tmp_path)]) == 2
    assert "01-Download-Convert.ipynb" in _error_line(capsys)


def test_unknown_release_lists_the_known_ones(tmp_path: Path, capsys) -> None:
    assert cli.main(["01", "--dataset", "ml-99k", "--data-dir", str(tmp_path / "d")]) == 2
    line = _error_line(capsys)
    assert "'ml-99k'" in line and "ml-25m" in line and "ml-latest-small" in line
    assert not _files(tmp_path / "d")


@pytest.mark.parametrize(("content", "what"), [
    (b"<!DOCTYPE html><html><body>Please log in</body></html>", "HTML"),
    (b"", "empty"),
    (b"PK\x03\x04 cut short", "truncated"),
])
def test_local_file_that_is_not_a_zip_is_refused_before_any_write(
    tmp_path: Path, capsys, content: bytes, what: str
) -> None:
    local = tmp_path / "ml-sample.zip"
    local.write_bytes(content)
    data = tmp_path / "data"
    assert cli.main(["01", "--data-dir", str(data), "-o", f"zip_path={local}"]) == 2
    line = _error_line(capsys)
    assert what in line and str(local) in line and "zip_path=" in line
    assert not _files(data)  # nothing copied into raw/


def test_local_zip_without_the_release_files_is_refused_before_any_write(
    tmp_path: Path, capsys
) -> None:
    local = tmp_path / "ml-sample.zip"
    with zipfile.ZipFile(local, "w") as zf:
        zf.writestr("ml-sample/README.txt", "not a release")
    data = tmp_path / "data"
    assert cli.main(["01", "--data-dir", str(data), "-o", f"zip_path={local}"]) == 2
    assert "has no movies.csv" in _error_line(capsys)
    assert not _files(data)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_names_it_and_what_to_do(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, retry_after=None: 0.0)
    base = f"http://127.0.0.1:{_closed_port()}/datasets/movielens"
    assert cli.main(["01", "--data-dir", str(tmp_path), "-o", f"base_url={base}"]) == 2
    line = _error_line(capsys)
    assert "cannot reach 127.0.0.1 (connection refused" in line
    assert "base_url=" in line and "zip_path=" in line


def test_misspelt_option_names_the_accepted_ones(tmp_path: Path, capsys) -> None:
    assert cli.main(["01", "--data-dir", str(tmp_path), "-o", "zip_pth=x.zip"]) == 2
    line = _error_line(capsys)
    assert "'zip_pth'" in line and "did you mean zip_path?" in line
    assert "base_url, zip_path, force" in line
    assert not _files(tmp_path)


def test_options_of_a_forwarding_stage_come_from_its_target(monkeypatch) -> None:
    assert {"epochs", "batch_size", "ensemble"} <= set(cli.stage_options("08"))
    with pytest.raises(UserError, match="did you mean epochs"):
        cli.check_options("08", {"epoch": 3})
    monkeypatch.delitem(cli.OPTIONS_OF, "08")  # run_keras(cfg, **options) alone: not checkable
    cli.check_options("08", {"epoch": 3})


def test_usage_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert cli.main(["99"]) == 2
    assert "invalid choice: '99'" in _error_line(capsys)
    assert cli.main(["01", "-o", "no-equals"]) == 2
    assert "expected key=value" in _error_line(capsys)
    assert cli.main(["all", "-o", "force=True", "--data-dir", str(tmp_path)]) == 2
    assert "one numbered stage" in _error_line(capsys)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_world(Config(data_dir=tmp_path_factory.mktemp("world"), sample_profile="small"))


@pytest.fixture
def mirror(world: Path) -> Iterator:
    with serve(world) as m:
        yield m


def test_checksum_mismatch_over_http_names_both_sums(
    tmp_path: Path, capsys, monkeypatch, mirror
) -> None:
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, retry_after=None: 0.0)
    published = (mirror.world_dir / "ml-sample.zip.md5").read_text().split()[0]
    mirror.add_fault(r"ml-sample\.zip$", Fault("html"))  # a portal page answers instead
    argv = ["01", "--data-dir", str(tmp_path), "--profile", "small",
            "-o", f"base_url={mirror.movielens_base_url}"]
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    got = re.search(rf"^error: md5 mismatch: expected ({HEX32}), got ({HEX32}) from ", line)
    assert got is not None, line
    assert got.group(1) == published and got.group(2) != published
    assert not [p for p in _files(tmp_path) if p.suffix in (".zip", ".part")]


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    def broken(cfg: Config) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "stage_function", lambda stage: broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["01", "--data-dir", str(tmp_path)])
