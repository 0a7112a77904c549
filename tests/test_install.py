"""make install into a temporary DESTDIR, and systemd-analyze verify on the installed unit."""

import shutil
import subprocess

import pytest
import yaml

from tests.helpers import ROOT


def make_install(destdir):
    return subprocess.run(
        ["make", "-s", "install", "DESTDIR=%s" % destdir],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_install_lays_out_code_config_unit_and_user(tmp_path):
    result = make_install(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "opt/digitd/daemon/cli.py").exists()
    assert (tmp_path / "opt/digitd/models/digits.onnx").exists()
    assert not list((tmp_path / "opt/digitd").rglob("__pycache__"))
    unit = (tmp_path / "etc/systemd/system/digitd.service").read_text()
    assert "ExecStart=/opt/digitd/.venv/bin/python -m daemon run -c /etc/digitd/config.yaml" in unit
    assert "@PREFIX@" not in unit and "@SYSCONFDIR@" not in unit
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "RestartSec=5",
        "RestartPreventExitStatus=78",
        "User=digitd",
        "SupplementaryGroups=video",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=digitd",
        "ReadOnlyPaths=/opt/digitd",
        "ReadWritePaths=-/etc/digitd",
    ):
        assert line in unit.splitlines(), line
    assert "u digitd" in (tmp_path / "usr/lib/sysusers.d/digitd.conf").read_text()
    assert yaml.safe_load((tmp_path / "etc/digitd/config.yaml").read_text())["mqtt"]["prefix"] == "digitd"


def test_install_never_overwrites_an_existing_config(tmp_path):
    config = tmp_path / "etc/digitd/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("device_id: mine\n")
    result = make_install(tmp_path)
    assert result.returncode == 0
    assert config.read_text() == "device_id: mine\n"
    assert "keeping existing" in result.stdout


def test_uninstall_removes_code_and_unit_but_keeps_config(tmp_path):
    assert make_install(tmp_path).returncode == 0
    result = subprocess.run(
        ["make", "-s", "uninstall", "DESTDIR=%s" % tmp_path],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "opt/digitd").exists()
    assert not (tmp_path / "etc/systemd/system/digitd.service").exists()
    assert (tmp_path / "etc/digitd/config.yaml").exists()


def test_systemd_analyze_verify_reports_nothing(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    assert make_install(tmp_path).returncode == 0
    venv_python = tmp_path / "opt/digitd/.venv/bin/python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(shutil.which("python3"))
    # verify resolves ExecStart paths on this machine: point them into the DESTDIR tree.
    unit = (tmp_path / "etc/systemd/system/digitd.service").read_text()
    unit = unit.replace("/opt/digitd", str(tmp_path / "opt/digitd")).replace(
        "/etc/digitd", str(tmp_path / "etc/digitd")
    )
    checked = tmp_path / "verify" / "digitd.service"
    checked.parent.mkdir()
    checked.write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(checked)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stderr
    )
