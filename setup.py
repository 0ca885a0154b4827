"""ament_python package definition (also installable with plain pip: scripts land in bin/)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "distilvpr_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    extras_require={"test": ["pytest", "pytest-timeout"]},
    zip_safe=True,
    maintainer="distilvpr_ros maintainers",
    maintainer_email="maintainers@distilvpr-ros.dev",
    description="Camera+LiDAR teacher → camera-only student visual place recognition for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "distilvpr = distilvpr_ros.cli:main",
            "mapping_node = distilvpr_ros.ros.mapping_node:main",
            "localization_node = distilvpr_ros.ros.localization_node:main",
        ],
    },
)
