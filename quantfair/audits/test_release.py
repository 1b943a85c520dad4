"""Release gates for the quantized model or artifact you ship (marker quantfair_release):
every language's damage within the maxima given as options or in the ini file, e.g.

    pytest audits/ -m quantfair_release --model smollm2-135m --quantized release.gguf \
        --quantfair-max-disparity 2.0,he=3.0 --quantfair-max-kld-disparity 2.5 \
        --quantfair-max-seed-disparity 3.0 --baseline reports/previous-release.json
"""

from quantfair.audit import Finding, ReleaseBound, audit

GATE = "not a seed finding: a release gate, bounded by the run's options"

test_release_disparity = audit(Finding(
    id="release_disparity", experiments=("release",),
    claim="No language loses more than the allowed multiple of English's information (NLL)",
    seed=GATE, check=ReleaseBound("none", "disparity"), release=True,
))

test_release_kld_disparity = audit(Finding(
    id="release_kld_disparity", experiments=("release",),
    claim="No language's next-token distribution moves more than the allowed multiple of "
          "English's (KL divergence per byte)",
    seed=GATE, check=ReleaseBound("none", "kld_disparity"), release=True,
))

test_release_damage_ratio = audit(Finding(
    id="release_damage_ratio", experiments=("release",),
    claim="No language's degradation exceeds the allowed multiple of English's (per-token "
          "seed disparity)",
    seed=GATE, check=ReleaseBound("none", "seed_disparity"), release=True,
))

test_release_degradation = audit(Finding(
    id="release_degradation", experiments=("release",),
    claim="No language's perplexity, English's included, grows by more than the allowed share",
    seed=GATE, check=ReleaseBound("none", "degradation", include_reference=True), release=True,
))
