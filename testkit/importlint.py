"""An import-linter contract type whose forbidden modules follow the registries: every part
registered in the named seams (its module) and each backend's runtime libraries (their
top-level packages), besides those the contract lists. A new backend or decoder is then kept
out of the producer by its registration line alone (.importlinter, ``contract_types``)."""

from __future__ import annotations

from typing import Any

from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.domain import fields

ROOTS = ("worker.", "producer.")  # the packages import-linter's graph holds


def registered_modules(seams: set[str]) -> list[str]:
    """The modules of the parts registered in ``seams``, and their declared runtimes."""
    from worker.core import plugins
    from worker.core.registry import seam

    plugins.load("TAGGER_PLUGINS", "")  # the built-in seams and installed plugins
    found: list[str] = []
    for name in sorted(seams):
        for part in seam(name).parts().values():
            module = part.target.partition(":")[0] if isinstance(part.target, str) else ""
            found += [module] if module.startswith(ROOTS) else []
            found += [m.partition(".")[0] for m in getattr(part, "runtime", ())]
    return list(dict.fromkeys(found))


class RegisteredPartsContract(ForbiddenContract):
    """``forbidden``, plus ``seams``: the registries whose parts are forbidden as well."""

    type_name = "forbidden_parts"
    seams = fields.SetField(subfield=fields.StringField())

    def __init__(self, name: str, session_options: dict[str, Any],
                 contract_options: dict[str, Any]) -> None:
        options = dict(contract_options)
        listed = options.get("forbidden_modules", [])
        seams = options.get("seams", [])
        seams = {seams} if isinstance(seams, str) else set(seams)
        options["forbidden_modules"] = list(dict.fromkeys(
            [*([listed] if isinstance(listed, str) else listed), *registered_modules(seams)]))
        super().__init__(name, session_options, options)
