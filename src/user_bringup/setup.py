from glob import glob

from setuptools import find_packages, setup

package_name = "user_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        # launch/ and config/ are symlinks to the workspace's top-level folders.
        (f"share/{package_name}/launch", glob("launch/*.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="USER developers",
    maintainer_email="dev@user-robotics.org",
    description="USER bringup: launch files, configuration profiles, the userctl launcher and CLI.",
    license="Apache-2.0",
    entry_points={"console_scripts": ["userctl = user_bringup.cli:main"]},
)
