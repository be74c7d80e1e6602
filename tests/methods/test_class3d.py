"""The relion-class3d and cryosparc-abinit recipes in the registry: their published defaults, what
they need, and the data-versus-prior resolution rule."""

import torch

from cryolens.imaging.so3_grid import angular_step
from cryolens.inference.classify import resolution_shell as _resolution_shell
from cryolens.methods.registry import Known, get


def test_recipes_are_registered_with_relion_and_cryosparc_defaults():
    """relion-class3d: discrete, needs the CTF but not poses, T = 4, 25 iterations and a 7.5° grid
    (RELION's Class3D defaults), offsets 5 px step 1; cryosparc-abinit(-hetero): 35 → 12 Å, mini-batches
    90 → 300 (cryoSPARC's ab initio defaults), homogeneous / discrete; none accepts data without a CTF."""
    c = get("relion-class3d")
    assert c.heterogeneity == "discrete" and c.needs == frozenset({"ctf"})
    assert c.defaults["tau2_fudge"] == 4.0 and c.defaults["n_iterations"] == 25
    assert abs(angular_step(c.defaults["healpix_order"]) - 7.5) < 1e-9
    assert (c.defaults["offset_range"], c.defaults["offset_step"]) == (5.0, 1.0)
    assert c.accepts(Known(poses=False, ctf=True)) and not c.accepts(Known(poses=True, ctf=False))
    a, h = get("cryosparc-abinit"), get("cryosparc-abinit-hetero")
    assert a.heterogeneity == "homogeneous" and h.heterogeneity == "discrete" and h.defaults["n_classes"] == 2
    for r in (a, h):
        assert (r.defaults["initial_resolution"], r.defaults["final_resolution"]) == (35.0, 12.0)
        assert (r.defaults["batch_size"], r.defaults["final_batch_size"]) == (90, 300)
        assert r.accepts(Known(poses=False, ctf=True)) and not r.accepts(Known(poses=False, ctf=False))


def test_resolution_is_where_data_stops_dominating_the_prior():
    """The current resolution shell is the last shell before data_vs_prior first drops below 1, taken
    over the best class (RELION's rule for classification); never below shell 1."""
    dvp = torch.tensor([[9.0, 5.0, 3.0, 0.9, 2.0, 0.1],
                        [9.0, 5.0, 3.0, 2.0, 1.5, 0.5]])
    assert _resolution_shell(dvp) == 4
    assert _resolution_shell(torch.tensor([[5.0, 0.5, 0.2]])) == 1
    assert _resolution_shell(torch.tensor([[5.0, 3.0, 2.0]])) == 2


def test_reference_folds_default_follows_skip_align():
    """relion-class3d: 4 leave-fold-out class references with skip_align (measured against RELION on four structures,
    docs/METHODS.md), RELION's own references (0) when poses are searched (not measured there); a value given is kept
    either way, text too (the CLI's --set)."""
    from cryolens.inference.classify import folds_of
    from cryolens.methods.class3d import as_config

    assert get("relion-class3d").defaults["reference_folds"] is None
    assert folds_of(as_config({"skip_align": True})) == 4
    assert folds_of(as_config({"skip_align": False})) == 0
    assert folds_of(as_config({"skip_align": True, "reference_folds": "0"})) == 0
    assert folds_of(as_config({"skip_align": False, "reference_folds": "4"})) == 4
