"""The strategy given with --strategy (e.g. `--strategy suggested`, the result of
`quantfair suggest`), tested on the audit units, which the search never saw."""

from quantfair.audit import CANDIDATE, Better, Finding, Matched, WithinBudget, audit

test_candidate_beats_none = audit(Finding(
    id="candidate_beats_none", experiments=("057", "058", "061", "062", "063", "064"),
    claim="The audited strategy lowers mean disparity against no protection",
    seed="Critical layers are model-specific: use variance analysis to find them (057-064)",
    check=Better(CANDIDATE, than="none"),
))

test_candidate_beats_random = audit(Finding(
    id="candidate_beats_random", experiments=("055",),
    claim="The audited strategy beats random protection at the same budget",
    seed="Random 11.4% protection: 44-327x (fails)",
    check=Better(CANDIDATE, than=Matched("random", CANDIDATE)),
))

test_candidate_within_budget = audit(Finding(
    id="candidate_within_budget", experiments=("027",),
    claim="The suggested strategy respects the parameter budget it was searched for",
    seed="Pareto frontier of overhead vs disparity",
    check=WithinBudget(),
))
