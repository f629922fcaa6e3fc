"""The ``ep2p-loc`` console script: every subcommand answers --help; check-kitti runs on real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ep2p_loc_ros.cli import build_parser


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ep2p_loc_ros.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_cli_every_subcommand_answers_help(command):
    res = _run(command, "--help", timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"ep2p-loc {command}" in res.stdout


def test_cli_check_kitti_json_on_real_frames(kitti_reference):
    res = _run("check-kitti", "--json")
    assert res.returncode == 0, res.stderr
    checks = json.loads(res.stdout)
    assert [c["frame_id"] for c in checks] == sorted(kitti_reference)
    for c in checks:
        assert c["in_image"] == kitti_reference[c["frame_id"]]["in_image_round"]
        assert c["pnp_status"] == "ok"
        assert c["pnp_translation_err_cm"] < 5.0 and c["pnp_rotation_err_deg"] < 0.2
        assert 0 < c["ipr_kept"] < c["in_image"]


def test_cli_check_kitti_writes_report(tmp_path: Path):
    res = _run("check-kitti", "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    assert report.count("| ok |") == 3 and "MISMATCH" not in report
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("overlay_*.png"))
    assert pngs == ["overlay_000000.png", "overlay_000001.png", "overlay_000002.png"]
    assert all((tmp_path / "rep" / p).stat().st_size > 10_000 for p in pngs)


def test_cli_bad_data_dir_is_a_clear_error(tmp_path: Path):
    res = _run("check-kitti", "--data", str(tmp_path), "--json")
    assert res.returncode == 2
    assert "not a KITTI object-layout directory" in res.stderr and "Traceback" not in res.stderr
