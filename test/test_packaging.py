"""The package is a well-formed ament_python package: manifest, resource marker, data files, console script."""

import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packaging_package_xml_declares_ros_run_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "ep2p_loc_ros"
    deps = {e.text for e in root.iter("exec_depend")}
    for dep in (
        "rclpy",
        "sensor_msgs",
        "geometry_msgs",
        "lifecycle_msgs",
        "diagnostic_msgs",
        "tf2_ros",
        "tf2_msgs",
        "cv_bridge",
    ):
        assert dep in deps, dep
    assert root.find("export/build_type").text == "ament_python"


def test_packaging_setup_installs_resource_marker_and_console_script():
    text = (ROOT / "setup.py").read_text()
    assert (ROOT / "resource" / "ep2p_loc_ros").is_file()
    assert "share/ament_index/resource_index/packages" in text
    assert "ep2p-loc = ep2p_loc_ros.cli:main" in text
    for folder in ("launch", "config", "rviz", "models"):
        assert f"share/{{PACKAGE}}/{folder}" in text
    assert (ROOT / "tools" / "tf2_msgs" / "COLCON_IGNORE").is_file()


def test_packaging_core_never_imports_rclpy():
    """The ROS-free core: no module outside ros/ imports rclpy or message packages."""
    offenders = []
    for path in (ROOT / "ep2p_loc_ros").rglob("*.py"):
        if "ros" in path.relative_to(ROOT / "ep2p_loc_ros").parts[:1]:
            continue
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")) and any(
                m in s for m in ("rclpy", "sensor_msgs", "geometry_msgs", "tf2_", "cv_bridge")
            ):
                offenders.append(f"{path.name}: {s}")
    assert not offenders, offenders
