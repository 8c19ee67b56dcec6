"""A seedable synthetic English corpus, so tests and debug runs need no downloaded text.

The grammar draws on a few hundred everyday English words, so a tokenizer trained on it still
covers plain English. It also has structure a tiny model can learn, so its MLM loss falls well
below the unigram entropy: each document has a topic that restricts its nouns, verbs and
adjectives; a small cast of named characters recurs and is referred to by matching pronouns;
verbs agree with their subjects; counts agree with nouns; fixed phrases open and close scenes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def _words(text: str) -> list[str]:
    """Space-separated words -> list: keeps the word lists compact and readable."""
    return text.split()


def _nouns(text: str) -> list[tuple[str, str]]:
    """'sg pl, sg pl' -> [(singular, plural)]: compact word lists, irregular plurals included."""
    return [(singular, plural) for singular, plural in (pair.split() for pair in text.split(","))]


def _verbs(text: str) -> list[tuple[str, str, str]]:
    """'base third past, ...' -> [(base, third person singular, past)]."""
    return [(b, t, p) for b, t, p in (triple.split() for triple in text.split(","))]


@dataclass(frozen=True)
class Topic:
    """The words one document may draw its scene from."""

    people: list[tuple[str, str]]
    things: list[tuple[str, str]]
    verbs: list[tuple[str, str, str]]
    adjectives: list[str]
    places: list[str]


TOPICS: dict[str, Topic] = {
    "market": Topic(
        _nouns("seller sellers, customer customers, baker bakers"),
        _nouns(
            "apple apples, loaf loaves, tomato tomatoes, basket baskets, orange oranges, "
            "egg eggs, bag bags, potato potatoes, cheese cheeses, coin coins"
        ),
        _verbs(
            "buy buys bought, sell sells sold, carry carries carried, choose chooses chose, "
            "count counts counted, pack packs packed"
        ),
        _words("fresh ripe cheap expensive heavy sweet"),
        _words("market shop bakery corner"),
    ),
    "farm": Topic(
        _nouns("farmer farmers, shepherd shepherds, worker workers"),
        _nouns(
            "cow cows, horse horses, sheep sheep, goat goats, chicken chickens, "
            "tractor tractors, fence fences, bucket buckets, pig pigs, duck ducks"
        ),
        _verbs(
            "feed feeds fed, watch watches watched, wash washes washed, "
            "follow follows followed, brush brushes brushed, count counts counted"
        ),
        _words("hungry muddy strong quiet brown lazy"),
        _words("farm barn field meadow"),
    ),
    "school": Topic(
        _nouns("teacher teachers, student students, pupil pupils"),
        _nouns(
            "book books, lesson lessons, pencil pencils, desk desks, story stories, "
            "question questions, letter letters, map maps, poem poems, notebook notebooks"
        ),
        _verbs(
            "read reads read, write writes wrote, learn learns learned, "
            "explain explains explained, answer answers answered, study studies studied"
        ),
        _words("difficult easy interesting short clever boring"),
        _words("school classroom library hall"),
    ),
    "kitchen": Topic(
        _nouns("cook cooks, chef chefs, waiter waiters"),
        _nouns(
            "soup soups, cake cakes, pot pots, knife knives, plate plates, spoon spoons, "
            "pie pies, onion onions, sandwich sandwiches, cup cups"
        ),
        _verbs(
            "cook cooks cooked, bake bakes baked, cut cuts cut, taste tastes tasted, "
            "serve serves served, stir stirs stirred"
        ),
        _words("hot warm delicious salty clean sharp"),
        _words("kitchen restaurant cafe bakery"),
    ),
    "sea": Topic(
        _nouns("sailor sailors, captain captains, fisherman fishermen"),
        _nouns(
            "boat boats, ship ships, net nets, wave waves, shell shells, fish fish, "
            "rope ropes, island islands, sail sails, crab crabs"
        ),
        _verbs(
            "sail sails sailed, catch catches caught, pull pulls pulled, find finds found, "
            "mend mends mended, tie ties tied"
        ),
        _words("blue cold wide calm dark wet"),
        _words("harbor beach shore island"),
    ),
    "travel": Topic(
        _nouns("driver drivers, passenger passengers, traveler travelers"),
        _nouns(
            "train trains, bus buses, ticket tickets, car cars, bridge bridges, road roads, "
            "suitcase suitcases, bicycle bicycles, plane planes, taxi taxis"
        ),
        _verbs(
            "drive drives drove, ride rides rode, miss misses missed, catch catches caught, "
            "park parks parked, board boards boarded"
        ),
        _words("late early busy crowded fast slow"),
        _words("station city airport street"),
    ),
    "health": Topic(
        _nouns("doctor doctors, nurse nurses, patient patients"),
        _nouns(
            "medicine medicines, pill pills, bed beds, bandage bandages, hand hands, "
            "heart hearts, tooth teeth, glass glasses, blanket blankets, leg legs"
        ),
        _verbs(
            "check checks checked, treat treats treated, clean cleans cleaned, "
            "bring brings brought, wrap wraps wrapped, need needs needed"
        ),
        _words("sick tired healthy careful gentle painful"),
        _words("hospital clinic ward pharmacy"),
    ),
    "music": Topic(
        _nouns("singer singers, musician musicians, dancer dancers"),
        _nouns(
            "song songs, guitar guitars, piano pianos, drum drums, band bands, "
            "concert concerts, voice voices, note notes, violin violins, record records"
        ),
        _verbs(
            "play plays played, sing sings sang, hear hears heard, practice practices practiced, "
            "tune tunes tuned, enjoy enjoys enjoyed"
        ),
        _words("loud soft beautiful famous lovely strange"),
        _words("theater studio club stage"),
    ),
    "sports": Topic(
        _nouns("player players, coach coaches, runner runners"),
        _nouns(
            "ball balls, team teams, game games, goal goals, race races, match matches, "
            "shoe shoes, medal medals, prize prizes, bat bats"
        ),
        _verbs(
            "kick kicks kicked, win wins won, lose loses lost, throw throws threw, "
            "watch watches watched, score scores scored"
        ),
        _words("tall proud quick tough final important"),
        _words("stadium park gym pool"),
    ),
    "garden": Topic(
        _nouns("gardener gardeners, neighbor neighbors, visitor visitors"),
        _nouns(
            "flower flowers, tree trees, rose roses, seed seeds, bird birds, leaf leaves, "
            "bush bushes, carrot carrots, pond ponds, bench benches"
        ),
        _verbs(
            "water waters watered, pick picks picked, plant plants planted, dig digs dug, "
            "grow grows grew, trim trims trimmed"
        ),
        _words("bright yellow red green tall wild"),
        _words("garden yard orchard greenhouse"),
    ),
}

NAMES: list[tuple[str, str]] = [
    (name, "he" if gender == "m" else "she")
    for name, gender in (
        pair.split(":")
        for pair in _words(
            "Anna:f Ben:m Clara:f David:m Emma:f Frank:m Grace:f Henry:m Irene:f Jack:m "
            "Kate:f Leo:m Maria:f Nick:m Olivia:f Peter:m Quinn:f Rosa:f Sam:m Tom:m Uma:f "
            "Victor:m Wendy:f Xavier:m Yusuf:m Zoe:f"
        )
    )
]
TOWNS = _words("London Boston Dublin Chicago Denver Oxford Paris Sydney Toronto Berlin Madrid")
RELATIVES = _nouns(
    "friend friends, brother brothers, sister sisters, cousin cousins, neighbor neighbors, "
    "child children, son sons, daughter daughters"
)
PEOPLE = _nouns("man men, woman women, boy boys, girl girls, person people, family families")
GENERAL_ADJECTIVES = _words("old young little big good small new nice happy kind busy")
MOTION = _verbs(
    "go goes went, walk walks walked, run runs ran, hurry hurries hurried, come comes came"
)
STILL = _verbs(
    "wait waits waited, smile smiles smiled, laugh laughs laughed, rest rests rested, "
    "sit sits sat, stand stands stood, work works worked, talk talks talked, sleep sleeps slept"
)
COMMON = _verbs(
    "see sees saw, like likes liked, want wants wanted, find finds found, bring brings brought, "
    "take takes took, keep keeps kept, leave leaves left, hold holds held, love loves loved, "
    "get gets got, show shows showed, open opens opened, make makes made"
)
MANNER = _words("quickly slowly carefully quietly happily sadly suddenly finally together again")
FREQUENCY = _words("always often never sometimes usually rarely")
DAYS = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
MONTHS = _words(
    "January February March April May June July August September October November December"
)
DAY_PARTS = _words("morning afternoon evening night")
WEATHER = _words("sunny rainy cold warm windy cloudy foggy bright")
COLORS = _words("red blue green yellow white black brown gray")
COUNTS = _words("one two three four five six seven eight nine ten eleven twelve twenty")
INTERJECTIONS = _words("Look Oh Well Yes No Wow Please")
POSSESSIVE = {"he": "his", "she": "her", "they": "their", "I": "my", "we": "our", "you": "your"}
OBJECT = {"he": "him", "she": "her", "they": "them"}


@dataclass
class Subject:
    """A subject phrase and the pronoun it agrees like: he/she (a named person) and it (any
    other singular subject) take singular verbs; I, we, you and they take plural ones."""

    text: str
    pronoun: str

    @property
    def singular(self) -> bool:
        return self.pronoun in ("he", "she", "it")


@dataclass
class Scene:
    """One document's state: its topic, cast, town and place, and who has been named."""

    rng: random.Random
    topic: Topic
    cast: list[tuple[str, str]]
    town: str
    place: str
    named: set[str] = field(default_factory=set)

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def character(self) -> tuple[str, str]:
        return self.pick(self.cast)

    def subject(self) -> Subject:
        """A cast member (by name, or by pronoun once named), a pair, or a group."""
        roll = self.rng.random()
        if roll < 0.6:
            name, pronoun = self.character()
            if name in self.named and self.chance(0.5):
                return Subject(pronoun, pronoun)
            self.named.add(name)
            return Subject(name, pronoun)
        if roll < 0.75 and len(self.cast) > 1:
            first, second = self.rng.sample(self.cast, 2)
            return Subject(f"{first[0]} and {second[0]}", "they")
        if roll < 0.9:
            singular, plural = self.pick(self.topic.people + PEOPLE)
            if self.chance(0.5):
                return Subject(f"the {singular}", "it")
            return Subject(f"the {plural}", "they")
        return Subject(*self.pick([("I", "I"), ("we", "we"), ("you", "you"), ("they", "they")]))

    def thing(self, owner: str) -> str:
        """A noun phrase for one of the topic's things, with a determiner that agrees."""
        singular, plural = self.pick(self.topic.things)
        adjective = self.pick(self.topic.adjectives + COLORS) + " " if self.chance(0.4) else ""
        roll = self.rng.random()
        if roll < 0.35:
            return f"the {adjective}{singular}"
        if roll < 0.55:
            return f"{article(adjective + singular)} {adjective}{singular}"
        if roll < 0.7:
            return f"{POSSESSIVE.get(owner, 'their')} {adjective}{plural}"
        if roll < 0.85:
            return f"{self.pick(['some', 'the', 'these', 'those', 'many'])} {adjective}{plural}"
        return counted(self.pick(COUNTS), singular, plural, adjective)

    def companion(self, owner: str) -> str:
        singular, plural = self.pick(RELATIVES)
        return f"{POSSESSIVE.get(owner, 'their')} {singular if self.chance(0.5) else plural}"

    def where(self) -> str:
        return self.pick([f"at the {self.place}", f"in {self.town}", f"near the {self.place}"])

    def when(self) -> str:
        return self.pick(
            [
                f"on {self.pick(DAYS)}",
                f"in the {self.pick(DAY_PARTS[:3])}",
                f"last {self.pick(['week', 'year', 'month', *DAYS])}",
                f"at {self.rng.randint(1, 12)} o'clock",
                f"on {self.rng.randint(1, 28)} {self.pick(MONTHS)}",
                f"in {self.rng.randint(1950, 2024)}",
            ]
        )


def article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def counted(count: str, singular: str, plural: str, adjective: str = "") -> str:
    return f"{count} {adjective}{singular if count == 'one' else plural}"


def agree(verb: tuple[str, str, str], subject: Subject, past: bool) -> str:
    base, third, past_form = verb
    if past:
        return past_form
    return third if subject.singular else base


def be(subject: Subject, past: bool) -> str:
    if past:
        return "was" if subject.singular or subject.pronoun == "I" else "were"
    return {"I": "am"}.get(subject.pronoun, "is" if subject.singular else "are")


def clause(scene: Scene, past: bool = True) -> str:
    """A subject-verb-object clause, the workhorse of the grammar."""
    subject = scene.subject()
    verb = scene.pick(scene.topic.verbs) if scene.chance(0.7) else scene.pick(COMMON)
    manner = f" {scene.pick(MANNER)}" if scene.chance(0.2) else ""
    tail = f" {scene.where()}" if scene.chance(0.3) else ""
    return (
        f"{subject.text}{manner} {agree(verb, subject, past)} {scene.thing(subject.pronoun)}{tail}"
    )


def action(scene: Scene) -> str:
    extra = f" with {scene.companion('they')}" if scene.chance(0.2) else ""
    return f"{clause(scene)}{extra}."


def habit(scene: Scene) -> str:
    opener = scene.pick(
        [f"Every {scene.pick(DAYS)}", "In the morning", "On weekends", "Every day", "At night"]
    )
    subject = scene.subject()
    verb = scene.pick(scene.topic.verbs)
    often = f" {scene.pick(FREQUENCY)}" if scene.chance(0.5) else ""
    obj = scene.thing(subject.pronoun)
    return f"{opener}, {subject.text}{often} {agree(verb, subject, False)} {obj}."


def journey(scene: Scene) -> str:
    subject = scene.subject()
    past = scene.chance(0.7)
    verb = agree(scene.pick(MOTION), subject, past)
    company = f" with {scene.companion(subject.pronoun)}" if scene.chance(0.4) else ""
    return f"{subject.text} {verb} to the {scene.place}{company} {scene.when()}."


def description(scene: Scene) -> str:
    singular, plural = scene.pick(scene.topic.things)
    first, second = scene.rng.sample(scene.topic.adjectives, 2)
    past = scene.chance(0.6)
    if scene.chance(0.5):
        return f"The {singular} {'was' if past else 'is'} very {first}."
    return f"The {plural} {'were' if past else 'are'} {first} and {second}."


def portrait(scene: Scene) -> str:
    name, pronoun = scene.character()
    scene.named.add(name)
    role = scene.pick(scene.topic.people)[0]
    adjective = scene.pick(GENERAL_ADJECTIVES)
    habit = f"{pronoun} {scene.pick(STILL)[1]} {scene.where()}"
    return f"{name} is {article(adjective)} {adjective} {role}, and {habit}."


def dialogue(scene: Scene) -> str:
    name, pronoun = scene.character()
    singular, plural = scene.pick(scene.topic.things)
    adjective = scene.pick(scene.topic.adjectives)
    speech = scene.pick(
        [
            f"{scene.pick(INTERJECTIONS)}, the {plural} are {adjective} today",
            f"I {scene.pick(scene.topic.verbs)[0]} the {singular} every day",
            f"We need {counted(scene.pick(COUNTS[1:]), singular, plural)} for the {scene.place}",
        ]
    )
    said = f"{pronoun} said" if name in scene.named and scene.chance(0.4) else f"said {name}"
    scene.named.add(name)
    return f'"{capitalize(speech)}," {said}.'


def question(scene: Scene) -> str:
    name, pronoun = scene.character()
    verb = scene.pick(scene.topic.verbs)
    singular = scene.pick(scene.topic.things)[0]
    answer = f"Yes, {pronoun} did." if scene.chance(0.5) else f"No, {pronoun} did not."
    return f"Did {name} {verb[0]} the {singular}? {answer}"


def reason(scene: Scene) -> str:
    joiner = scene.pick([", because", ", but", " and", ", so"])
    return f"{clause(scene)}{joiner} {clause(scene)}."


def time_and_place(scene: Scene) -> str:
    return f"{capitalize(scene.when())}, {clause(scene)}."


def tally(scene: Scene) -> str:
    singular, plural = scene.pick(scene.topic.things)
    count = scene.rng.randint(1, 99)
    noun = singular if count == 1 else plural
    verb = "was" if count == 1 else "were"
    price = scene.rng.randint(2, 50)
    return f"There {verb} {count} {noun} at the {scene.place}, and each cost {price} dollars."


def meeting(scene: Scene) -> str:
    """Two cast members meet: the object pronoun must match the one who is met."""
    (giver, pronoun), (met, met_pronoun) = scene.rng.sample(scene.cast, 2)
    scene.named.update((giver, met))
    gift = scene.thing(pronoun)
    return f"{giver} met {met} {scene.where()} and gave {OBJECT[met_pronoun]} {gift}."


def opening(scene: Scene) -> str:
    name, pronoun = scene.character()
    scene.named.add(name)
    return scene.pick(
        [
            f"It was a {scene.pick(WEATHER)} {scene.pick(DAY_PARTS)} in {scene.town}.",
            f"{name} lives in {scene.town} and works at the {scene.place}.",
            f"This is a story about {name} and {POSSESSIVE[pronoun]} {scene.pick(RELATIVES)[1]}.",
        ]
    )


def closing(scene: Scene) -> str:
    subject = scene.subject()
    return scene.pick(
        [
            f"At the end of the day, {subject.text} went home {scene.pick(MANNER)}.",
            f"It was a good day for everyone at the {scene.place}.",
            f"After that, {subject.text} {be(subject, True)} tired but happy.",
        ]
    )


SENTENCES: list[Callable[[Scene], str]] = [
    action,
    action,
    habit,
    journey,
    description,
    portrait,
    dialogue,
    question,
    reason,
    time_and_place,
    tally,
    meeting,
]


def capitalize(sentence: str) -> str:
    """Upper-case the first letter, also after an opening quote."""
    index = 1 if sentence.startswith('"') else 0
    return sentence[:index] + sentence[index].upper() + sentence[index + 1 :]


def document(rng: random.Random) -> str:
    """One document: a topic, a cast of two or three, and one to three paragraphs."""
    topic = TOPICS[rng.choice(list(TOPICS))]
    cast = rng.sample(NAMES, rng.randint(2, 3))
    scene = Scene(rng, topic, cast, town=rng.choice(TOWNS), place=rng.choice(topic.places))
    paragraphs = []
    for index in range(rng.randint(1, 3)):
        sentences = [opening(scene)] if index == 0 else []
        sentences += [rng.choice(SENTENCES)(scene) for _ in range(rng.randint(2, 6))]
        paragraphs.append(" ".join(capitalize(s) for s in sentences))
    paragraphs[-1] += " " + capitalize(closing(scene))
    return "\n".join(paragraphs)


def generate_documents(num_documents: int, seed: int) -> list[str]:
    """``num_documents`` documents; the same (count, seed) always gives the same text."""
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    rng = random.Random(seed)
    return [document(rng) for _ in range(num_documents)]
