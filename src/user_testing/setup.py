from setuptools import find_packages, setup

package_name = "user_testing"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="USER developers",
    maintainer_email="dev@user-robotics.org",
    description="USER test support: the franka_ros2 stand-in and fault injection. Never on a robot.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "franka_ros2_standin = user_testing.franka_ros2_standin:main",
            "faulty_robot_node = user_testing.faults:main",
        ],
    },
)
