"""Test stand-in for SGLang's CPU kernel package (``sgl_kernel``), never installed for users.

SGLang imports ``sgl_kernel`` when ``SGLANG_USE_CPU_ENGINE=1``; its CPU build is on no
package registry. Every name and submodule SGLang imports from it exists as a placeholder
(see ``_standin``), and no torch op is registered, so SGLang finds no AMX kernels and every
layer takes its native torch path. Using a placeholder raises: a test failure.
"""

from _standin import install

__version__ = "0.0.0+standin"
__getattr__ = install(__name__)
