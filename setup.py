"""ament_python / pip packaging for ep2p_loc_ros (colcon build and `pip install .` both use this file)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ep2p_loc_ros"


def _files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if not p.endswith((".gitkeep",)))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["ep2p_loc_ros", "ep2p_loc_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.py")),
        (f"share/{PACKAGE}/config", _files("config/*")),
        (f"share/{PACKAGE}/rviz", _files("rviz/*.rviz")),
        (f"share/{PACKAGE}/models", _files("models/*")),
    ],
    python_requires=">=3.10",
    # Pure-Python libraries the core needs. ROS packages are not listed: a ROS install provides them through
    # rosdep (package.xml); here they come from requirements.txt (PyPI wheels).
    install_requires=[
        "setuptools",
        "numpy",
        "numba",
        "scipy",
        "torch",
        "onnx",
        "opencv-python-headless",
        "poselib",
        "safetensors",
        "pillow",
        "pyyaml",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # onnxruntime comes in two mutually exclusive builds: take exactly one.
        "cpu": ["onnxruntime"],
        "gpu": ["onnxruntime-gpu"],
        "maps": ["open3d-cpu"],
        "bags": ["rosbags", "evo"],
        "test": ["pytest", "hypothesis", "ruff"],
    },
    zip_safe=True,
    maintainer="ep2p_loc_ros maintainers",
    maintainer_email="ep2p-loc-ros@example.com",
    description="EP2P-Loc: camera localization in a prebuilt LiDAR map from one image, as a ROS 2 lifecycle node.",
    license="Apache-2.0",
    entry_points={"console_scripts": ["ep2p-loc = ep2p_loc_ros.cli:main"]},
)
