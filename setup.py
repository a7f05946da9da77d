"""latentforge: chapter 17 of Hands-On ML (autoencoders, VAEs, GANs, diffusion) as a TFX + Ray + MLflow pipeline."""
import setuptools

setuptools.setup(
    name="latentforge",
    version="0.1.0",
    description="Representation learning and generative models as a TFX pipeline trained on Ray, tracked in MLflow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    # The design card's layout: each top-level folder is a package of its own.
    packages=setuptools.find_packages(include=["pipelines*", "components*", "trainers*", "evaluation*", "serving*",
                                               "backends*"]),
    # The explorer page's own files (served by the model server; no CDN).
    package_data={"serving": ["assets/*.html", "assets/*.js", "assets/*.css"]},
    # Versions live in requirements.txt + constraints.txt (the tested lock); `make install` applies them.
    install_requires=[],
    entry_points={"console_scripts": ["latentforge = pipelines.cli:main"]},
    license="Apache-2.0",
)
