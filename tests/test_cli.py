"""The CLI maps every notebook stage to an importable function."""

from __future__ import annotations

import argparse

import pytest

from mmlens import cli
from mmlens.artifacts import NOTEBOOKS


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


def test_missing_input_is_one_clear_line(tmp_path, capsys) -> None:
    assert cli.main(["05", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "01-Download-Convert.ipynb" in err and "Traceback" not in err
