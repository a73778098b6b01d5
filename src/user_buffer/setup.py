from setuptools import find_packages, setup

package_name = "user_buffer"

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
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "buffer_node = user_buffer.buffer_node:main",
        ],
    },
    maintainer="USER developers",
    maintainer_email="dev@user-robotics.org",
    description="USER replay buffer: rosbag2-compatible MCAP store, index, cache, sampling, recovery.",
    license="Apache-2.0",
)
