"""What the wheel holds (the rest of the project's description is in pyproject.toml).

- ``transfer`` and every sub-package under it, found by discovery, so a new engine folder ships
  without anyone listing it, with its data files (the demo data set, the torchvision catalogue);
- ``transfer_studio``: the web app exactly as it lies in the checkout (``app.py``, ``pages/``,
  ``ui/``, ``.streamlit/config.toml``), which ``transfer studio`` serves from wherever the
  wheel was installed. The checkout keeps its top level; only the wheel gathers it under one name.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

WEB_APP = "transfer_studio"


class BuildWithoutThisScript(build_py):
    """The web app's package is the checkout's top folder, which also holds this file: leave it out."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [module for module in modules if not (package == WEB_APP and module[1] == "setup")]


setup(
    cmdclass={"build_py": BuildWithoutThisScript},
    packages=[*find_packages(include=["transfer", "transfer.*"]), WEB_APP, f"{WEB_APP}.ui", f"{WEB_APP}.pages"],
    package_dir={WEB_APP: "."},
    package_data={
        "transfer.data": ["demo_data/**/*"],
        "transfer.models": ["torchvision_catalogue.json"],
        "transfer.serving": ["web_assets/*", "web_assets/ort/*"],
        WEB_APP: [".streamlit/config.toml"],
        f"{WEB_APP}.ui": ["assets/*"],
    },
)
