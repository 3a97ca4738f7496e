"""An Inspect task for ``saetools serve``: 20 capital-city questions the embedded SmolLM2-135M
can answer. ``capitals``: the question alone as the user message, one generation, scored by
``includes()`` (the answer contains the capital, case-folded).

No data set is downloaded: the samples are below. Run with ``benchmarks/inspect/run.sh``.
(Inspect's own ``multiple_choice()`` template asks for a reply ``ANSWER: X``, a format the
135M model does not follow: it answers "A) Paris" and scores 0, so that is not used here.)
"""

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate

# (country, capital)
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Russia", "Moscow"),
    ("Greece", "Athens"),
    ("Canada", "Ottawa"),
    ("China", "Beijing"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Ireland", "Dublin"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Thailand", "Bangkok"),
]


def _question(country: str) -> str:
    return f"What is the capital of {country}?"


@task
def capitals() -> Task:
    """Greedy answer to the bare question; correct when it names the capital."""
    return Task(
        dataset=[
            Sample(id=country.lower(), input=_question(country), target=capital)
            for country, capital in CAPITALS
        ],
        solver=generate(),
        scorer=includes(),
    )
