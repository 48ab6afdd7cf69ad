"""bench/profile_network.py (the source of the stage timings in docs/networks.md) runs, times
the stages it names, and leaves the library's functions as it found them."""
import json
import os
import sys

from etbkernels.network import etb, patches

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def test_profile_network_small(tmp_path):
    sys.path.insert(0, BENCH)
    try:
        import profile_network
    finally:
        sys.path.remove(BENCH)
    before = (patches.apply, patches.flatten_linear_directions, etb._pull_back)
    out = tmp_path / "prof"
    assert profile_network.main(["--batch", "3", "--repeats", "1", "--models", "small", "--out", str(out)]) == 0
    assert (patches.apply, patches.flatten_linear_directions, etb._pull_back) == before
    (r,) = json.loads(out.with_suffix(".json").read_text())
    # the small CNN runs its two convolutions as patches and its Flatten+Linear straight from them
    assert r["mask_etb"]["apply"] > 0 and r["mask_etb"]["flatten_linear_directions"] > 0
    assert 0 < r["mask_ibp_pull_back"] < r["mask_ibp_total"]
    assert r["per_logit_over_rest"] > 0
    assert "| small |" in out.with_suffix(".md").read_text()
