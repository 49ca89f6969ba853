"""Test stand-in for torchvision, never installed for users: PyPI's torchvision wheels are
built against other torch builds and fail to import next to torch 2.13.0+cpu
(``operator torchvision::nms does not exist``), yet SGLang imports ``torchvision.transforms``
for its image models. The tiny text model uses none of it; every name is a placeholder
(see ``_standin``) that raises when used."""

from _standin import install

__version__ = "0.0.0+standin"
__getattr__ = install(__name__)
