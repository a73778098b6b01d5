from glob import glob

from setuptools import find_packages, setup

package_name = "user_hal"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["py.typed", "assets/*", "assets/**/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="USER developers",
    maintainer_email="dev@user-robotics.org",
    description="USER hardware abstraction layer: robot node, backends, safety, discovery.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "robot_node = user_hal.robot_node:main",
            "registry_node = user_hal.registry_node:main",
            "scripted_policy = user_hal.scripted_policy_node:main",
            "teleop_node = user_hal.teleop_node:main",
        ],
    },
)
