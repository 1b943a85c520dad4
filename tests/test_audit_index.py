"""Every experiment of the research index is encoded by at least one audit."""

import re
from pathlib import Path

import pytest

AUDITS = Path(__file__).resolve().parents[1] / "quantfair" / "audits"


def seed_experiment_ids() -> set[str]:
    text = (AUDITS / "seed_index.md").read_text(encoding="utf-8")
    ids: set[str] = set()
    for cell in re.findall(r"^\|\s*(\d{3}[a-z]?(?:-\d{3})?)\s*\|", text, flags=re.M):
        if "-" in cell:
            first, last = cell.split("-")
            ids.update(f"{n:03d}" for n in range(int(first), int(last) + 1))
        else:
            ids.add(cell)
    return ids


def audit_findings():
    import importlib.util

    findings = []
    for path in sorted(AUDITS.glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"audits_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        findings += [value.quantfair_finding for name, value in vars(module).items()
                     if name.startswith("test_") and hasattr(value, "quantfair_finding")]
    return findings


def test_index_is_parsed():
    ids = seed_experiment_ids()
    assert {"001", "010", "028b", "052", "053", "061", "064"} <= ids
    assert len(ids) == 63  # 001-036, 038-064 with 028b in place of 028


@pytest.mark.parametrize("experiment", sorted(seed_experiment_ids()))
def test_every_experiment_maps_to_an_audit(experiment):
    covered = {e for finding in audit_findings() for e in finding.experiments}
    assert experiment in covered


def test_finding_ids_are_unique_and_quick_subset_exists():
    findings = audit_findings()
    ids = [f.id for f in findings]
    assert len(ids) == len(set(ids))
    assert any(f.quick for f in findings)


def test_every_finding_states_the_seed_and_every_bound_its_reason():
    import sys

    sys.path.insert(0, str(AUDITS.parents[1] / "scripts"))
    from seed_index import bound_text

    for finding in audit_findings():
        assert finding.seed, f"{finding.id}: no seed value or wording"
        if bound_text(finding.check):
            assert finding.slack, f"{finding.id}: a bound without the reason for it"


def test_the_committed_index_lists_every_finding_as_encoded():
    import sys

    sys.path.insert(0, str(AUDITS.parents[1] / "scripts"))
    from seed_index import INDEX, MARKER, section

    committed = INDEX.read_text(encoding="utf-8")
    assert MARKER in committed
    assert committed.split(MARKER)[1] == section().split(MARKER)[1], \
        "out of date: run python scripts/seed_index.py"
