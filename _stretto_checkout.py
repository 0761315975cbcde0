"""What the checkout's package folders do when imported under their bare names.

Stretto's folders `kernels/`, `engine/`, `tokenizer/` and `integrations/` are installed
as `stretto.kernels`, `stretto.engine`, ... (SPEC "Layout"). But whenever the checkout's
root is on `sys.path` (pytest's rootdir insertion, `python -m`, any script run from the
root) each folder is *also* importable as a top-level `kernels`, `engine`, ..., and those
bare names belong to other packages on the registry: transformers imports Hugging
Face's `kernels` at start-up, and a package named `tokenizer` exists too.

So a folder imported under its bare name runs `claim_bare_name`, which hands the name
to the installed package of that name when there is one (the import returns that
package, as if the checkout were not there), and otherwise leaves an empty module whose
attributes say what happened. Either way none of Stretto's code runs twice under two
names (its custom ops would be registered twice).

This module sits at the root on purpose: a bare-name import happens exactly when the
root is on `sys.path`, so it is importable exactly when it is needed, and it is not
part of the installed package.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

# Top-level names the checkout's layout takes when its root is on sys.path. The first
# four are Stretto's packages (imported as stretto.<name>); `benchmarks`, `gpu` and `tests`
# are the checkout's own top-level packages and must stay free on the registry side.
PACKAGE_FOLDERS = ("kernels", "engine", "tokenizer", "integrations")
CHECKOUT_PACKAGES = ("benchmarks", "gpu", "tests")
RESERVED_NAMES = PACKAGE_FOLDERS + CHECKOUT_PACKAGES + ("_stretto_checkout",)


def _same_folder(entry: str, folder: str) -> bool:
    try:
        return os.path.samefile(entry or os.getcwd(), folder)
    except OSError:
        return False


def installed_spec(name: str, root: str):
    """The spec of a top-level `name` found on sys.path without the checkout's root."""
    path = [p for p in sys.path if not _same_folder(p, root)]
    return importlib.machinery.PathFinder.find_spec(name, path)


def claim_bare_name(name: str, namespace: dict) -> None:
    """Called by the folder `name`'s `__init__` when imported as top-level `name`.

    With an installed package `name` elsewhere on sys.path, replace this module by it in
    `sys.modules` (the import statement then returns it). Without one, make the module
    `namespace` an empty placeholder whose attribute lookups explain the situation.
    """
    folder = os.path.dirname(namespace["__file__"])
    root = os.path.dirname(folder)
    spec = installed_spec(name, root)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return

    message = (
        f"module {name!r} here is the folder {folder} of a Stretto checkout, imported "
        f"under its bare name because the checkout's root is on sys.path; no installed "
        f"package {name!r} was found. Stretto's code is `stretto.{name}`"
    )

    def __getattr__(attr: str):
        raise AttributeError(f"{message} (no attribute {attr!r})")

    namespace["__all__"] = []
    namespace["__getattr__"] = __getattr__
