from setuptools import find_packages, setup

package_name = "user_link"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    entry_points={"console_scripts": ["link_node = user_link.bridge:main"]},
    zip_safe=True,
    maintainer="USER developers",
    maintainer_email="dev@user-robotics.org",
    description="USER link: edge and cloud joined over zenoh (mutual TLS, access control), wire-compatible with "
                "zenoh-bridge-ros2dds.",
    license="Apache-2.0",
)
