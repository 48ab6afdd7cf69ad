"""bench/profile_network.py (the source of the stage timings in docs/networks.md) runs, times
the stages it names, and reads them with a profiler: the library's functions are not replaced."""
import json

from bench import profile_network
from etbkernels._internal import profile_stages
from etbkernels.network import etb, patches


def test_profile_network_small(tmp_path):
    before = (patches.apply, patches.flatten_linear_directions, etb._pull_back)
    assert profile_network.main(["--batch", "3", "--repeats", "1", "--models", "small", "--out", str(tmp_path)]) == 0
    assert (patches.apply, patches.flatten_linear_directions, etb._pull_back) == before
    (r,) = json.loads((tmp_path / "profile_network.json").read_text())["rows"]
    # the small CNN runs its two convolutions as patches and its Flatten+Linear straight from them
    assert r["mask_etb"]["apply"] > 0 and r["mask_etb"]["flatten_linear_directions"] > 0
    assert 0 < r["mask_ibp_pull_back"] < r["mask_ibp_total"]
    assert r["per_logit_over_rest"] > 0
    assert "| small |" in (tmp_path / "profile_network.md").read_text()


def test_stage_seconds_counts_only_the_named_functions():
    def inner():
        return sum(range(20000))

    def outer():
        return inner() + inner()

    split = profile_network.stage_seconds(outer, {"inner": inner, "unused": profile_stages()["radius"]})
    assert set(split) == {"total", "inner"}
    assert 0 < split["inner"] <= split["total"]
