from setuptools import find_packages, setup

package_name = "user_learner"

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
    maintainer="USER developers",
    maintainer_email="dev@user-robotics.org",
    description="USER learning: policies, algorithms, rewards, inference and learner nodes, weight sync.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "inference_node = user_learner.inference_node:main",
            "learner_node = user_learner.learner_node:main",
            "reward_node = user_learner.reward_node:main",
            "scheduler_node = user_learner.scheduler_node:main",
        ],
    },
)
