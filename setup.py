"""Package discovery that pyproject.toml cannot express: two top-level folders install inside the package.

`targets/` and `schedules/` sit at the top of the repository, where people look for them, and
ship as `mest_compile.targets` and `mest_compile.schedules`. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

MAPPED = {"mest_compile.targets": "targets", "mest_compile.schedules": "schedules"}

packages = find_packages(include=["mest_compile", "mest_compile.*"])
for package, folder in MAPPED.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir={"mest_compile": "mest_compile", **MAPPED})
