"""The generation modules side by side: each names its spec section and composes the shared
modules instead of inheriting another generation's behaviour."""

from __future__ import annotations

import pytest

from kvmsim import g1_legacy, g2_noref, g2f_posted, g2s_sketch, g3_merged, gup_era
from kvmsim.generation import Generation

MODULES = [(g1_legacy, g1_legacy.G1Legacy, "§2"), (g2_noref, g2_noref.G2Noref, "§3"),
           (g2s_sketch, g2s_sketch.G2sSketch, "§4"), (g2f_posted, g2f_posted.G2fPosted, "§5"),
           (g3_merged, g3_merged.G3Merged, "§6")]


@pytest.mark.parametrize(("module", "cls", "section"), MODULES, ids=lambda x: getattr(x, "__name__", x))
def test_each_generation_names_its_spec_section_and_inherits_only_the_interface(module, cls, section):
    assert f"(spec {section})" in (module.__doc__ or "")
    assert cls.__mro__[1] is Generation and cls.spec.startswith(section)
    assert all(m.__name__ != module.__name__ for m in cls.builds_on)


def test_the_gup_era_path_is_shared_by_the_pre_6_13_generations_only():
    users = {cls.name for _, cls, _ in MODULES if gup_era in cls.builds_on}
    assert users == {"g1", "g2", "g2s", "g2f"}
