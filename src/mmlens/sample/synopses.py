"""Words of the sample world: movie titles, character names and topic-driven synopses.

Each synopsis topic has its own vocabulary and sentence templates, so a text encoder sees the topic
plainly in the words; a few genre words are mixed in. Everything is drawn from a numpy Generator,
so the same seed gives the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST_NAMES = (
    "Ada", "Ben", "Clara", "Dev", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Leo",
    "Maya", "Nico", "Olive", "Pavel", "Quinn", "Rosa", "Sam", "Tessa", "Umar", "Vera", "Walt",
    "Yara", "Zoë", "José", "Chloé", "Björn", "Noor", "Tariq", "Ingrid", "Marcus", "Lena", "Ravi",
)
LAST_NAMES = (
    "Abbott", "Brennan", "Castillo", "Dubois", "Engel", "Fairley", "Gomez", "Hart", "Ito", "Jansen",
    "Kowalski", "Lindqvist", "Moreau", "Nakamura", "O'Brien", "Petrov", "Quist", "Rossi", "Sato",
    "Thorne", "Underwood", "Vance", "Whitaker", "Young", "Zeller", "Müller", "Núñez", "D'Angelo",
)


@dataclass(frozen=True)
class Topic:
    """Vocabulary and templates of one synopsis topic."""

    name: str
    roles: tuple[str, ...]
    places: tuple[str, ...]
    things: tuple[str, ...]
    foes: tuple[str, ...]
    title_nouns: tuple[str, ...]
    openings: tuple[str, ...]
    middles: tuple[str, ...]
    endings: tuple[str, ...]
    tags: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "space exploration",
        ("astronaut", "mission commander", "ship engineer", "flight surgeon", "navigator"),
        ("a research station orbiting Jupiter", "the dark side of the moon", "a derelict starship",
         "a colony ship bound for Proxima", "an ice planet at the edge of the galaxy"),
        ("the fuel cells", "an alien signal", "the oxygen recycler", "a map of wormholes"),
        ("a failing reactor", "an alien intelligence", "a rogue AI", "a meteor storm"),
        ("Orbit", "Nebula", "Horizon", "Voyager", "Eclipse", "Starfall", "Gravity"),
        ("{name}, a veteran {role}, wakes from cryosleep aboard {place}.",
         "When {thing} goes silent, {name} leads a crew of astronauts toward {place}.",
         "Stranded on {place}, {role} {name} has forty hours of oxygen left."),
        ("Light-years from Earth, the crew must face {foe} before the next launch window.",
         "{name2} decodes {thing} and realises the spacecraft is not alone in orbit.",
         "With the rocket damaged, every spacewalk brings them closer to the void.",
         "Mission control on Earth cannot help, and {name}'s crew begins to doubt the captain."),
        ("Only a desperate burn around the planet can bring them home.",
         "The final frontier has never felt so lonely.",
         "What they find among the stars will change humanity forever."),
        ("space", "aliens", "astronauts", "sci-fi", "space travel"),
    ),
    Topic(
        "heist",
        ("safecracker", "con artist", "getaway driver", "retired thief", "hacker"),
        ("a casino in Monte Carlo", "the national bank vault", "a diamond exchange in Antwerp",
         "a billionaire's penthouse", "an art museum in Madrid"),
        ("a priceless diamond", "the vault codes", "a stolen painting",
         "ten million in bearer bonds"),
        ("a relentless insurance investigator", "a crime boss", "a double-crossing partner"),
        ("Score", "Vault", "Job", "Heist", "Jackpot", "Getaway", "Safe"),
        ("{name}, a {role} fresh out of prison, plans one last job at {place}.",
         "A crew of thieves led by {name} sets out to steal {thing} from {place}.",
         "{role} {name} is blackmailed into robbing {place} in a single night."),
        ("The plan needs a safecracker, a forger and perfect timing, but {foe} is watching.",
         "{name2} cracks the alarm system, yet the vault holds a surprise.",
         "Every member of the gang hides a secret, and the loot is not what it seems.",
         "The robbery goes wrong when {foe} changes the guards' schedule."),
        ("Trust is the one thing no thief can afford.",
         "The perfect crime has one fatal flaw.",
         "By dawn, someone will walk away with the money & someone will not."),
        ("heist", "twist ending", "clever", "caper", "robbery"),
    ),
    Topic(
        "romance",
        ("florist", "bookseller", "violinist", "pastry chef", "translator"),
        ("a rainy Paris café", "a small seaside town", "a wedding in Tuscany",
         "a bookshop in Brooklyn", "a winter train to Vienna"),
        ("a lost love letter", "a shared umbrella", "a wedding invitation", "an old photograph"),
        ("a jealous fiancé", "an ocean between them", "a family feud", "bad timing"),
        ("Heart", "Kiss", "Letter", "Summer", "Promise", "Valentine", "Waltz"),
        ("{name}, a shy {role}, meets {name2} in {place}.",
         "Years after their first kiss, {name} returns to {place} and finds {thing}.",
         "{role} {name} has sworn off love until a chance meeting in {place}."),
        ("Their romance blossoms over long walks, but {foe} threatens to keep them apart.",
         "{name2} is already engaged, and {name}'s heart is breaking.",
         "Love letters, missed trains and one unforgettable dance bring the couple closer.",
         "A misunderstanding about {thing} leaves both lovers heartbroken."),
        ("Sometimes true love needs a second chance.",
         "A tender story about falling in love when you least expect it.",
         "Will they follow their hearts before it is too late?"),
        ("romance", "love story", "romantic", "chick flick", "sweet"),
    ),
    Topic(
        "war",
        ("sergeant", "field medic", "fighter pilot", "radio operator", "young private"),
        ("the beaches of Normandy", "a frozen Russian front", "a jungle outpost",
         "a besieged city", "the trenches of the Somme"),
        ("secret battle plans", "a wounded comrade", "the last bridge", "an enemy codebook"),
        ("an enemy battalion", "an artillery barrage", "a ruthless general", "winter"),
        ("Battalion", "Front", "Trenches", "Sergeant", "Frontline", "Platoon", "Siege"),
        ("In 1944, {role} {name} lands with the platoon on {place}.",
         "{name}, a {role}, must carry {thing} behind enemy lines to {place}.",
         "When the army retreats from {place}, {name}'s squad is left behind."),
        ("The soldiers fight through mud and gunfire while {foe} closes in.",
         "{name2}, the platoon's medic, tends the wounded under constant shelling.",
         "Cut off from command, the squad must hold the line for one more night.",
         "Each battle costs the regiment more men, and {name} questions the war itself."),
        ("Courage, sacrifice and brotherhood under fire.",
         "Not every soldier will make it home.",
         "A harrowing portrait of the men who fought and fell."),
        ("war", "WWII", "soldiers", "military", "battle scenes"),
    ),
    Topic(
        "haunted house",
        ("widowed father", "paranormal investigator", "babysitter", "priest", "young mother"),
        ("a crumbling Victorian mansion", "an abandoned asylum", "a lakeside cabin",
         "an old farmhouse in Maine", "a boarding school for girls"),
        ("a cursed music box", "a locked attic door", "an old diary", "a child's drawing"),
        ("a vengeful ghost", "a demon in the walls", "the spirit of a drowned girl"),
        ("House", "Attic", "Haunting", "Whispers", "Shadows", "Cellar", "Ghost"),
        ("{name} and the family move into {place}, unaware of its past.",
         "{role} {name} is hired to spend a week alone in {place}.",
         "After finding {thing}, {name} hears footsteps every night at 3 a.m."),
        ("Doors slam, whispers echo in the hallway, and {foe} grows stronger.",
         "{name2} uncovers the murders that happened in the house a century ago.",
         "The ghostly apparitions begin to possess the youngest child.",
         "A séance goes terribly wrong, unleashing {foe}."),
        ("Some houses never forget.",
         "To survive the night, they must confront what lives in the dark.",
         "The haunting has only just begun."),
        ("ghosts", "haunted house", "creepy", "scary", "supernatural"),
    ),
    Topic(
        "sports underdog",
        ("washed-up boxer", "high-school coach", "rookie pitcher", "street-ball player", "jockey"),
        ("a small mining town", "the state championship", "a run-down boxing gym",
         "the Olympic trials", "a minor-league ballpark"),
        ("a scholarship", "the championship trophy", "a second chance", "the title belt"),
        ("the reigning champion", "a crooked promoter", "a career-ending injury"),
        ("Champion", "Comeback", "Season", "Knockout", "Finish Line", "Final Round", "Rookie"),
        ("{name}, a {role}, gets one last shot at {thing}.",
         "Nobody believes in the team from {place} except {role} {name}.",
         "After a humiliating defeat, {name} trains for a rematch with {foe}."),
        ("Coach {name2} pushes the misfit team through brutal training montages.",
         "On the road to the final game, the players learn to win together.",
         "A rivalry with {foe} turns every match into a grudge fight.",
         "{name}'s teammates doubt the underdog can last a single round."),
        ("It all comes down to the final whistle.",
         "An inspiring story about never giving up.",
         "The underdog's greatest victory may not happen on the field."),
        ("sports", "inspirational", "underdog", "boxing", "feel-good"),
    ),
    Topic(
        "courtroom",
        ("public defender", "young prosecutor", "juror", "disgraced attorney", "judge"),
        ("a small-town courthouse", "the Supreme Court", "a murder trial in Chicago",
         "a military tribunal", "a sweltering Alabama courtroom"),
        ("a hidden witness", "the missing evidence", "a forged confession", "the murder weapon"),
        ("a powerful corporation", "a corrupt district attorney", "public opinion"),
        ("Verdict", "Witness", "Testimony", "Jury", "Trial", "Objection", "Appeal"),
        ("{role} {name} takes the case nobody wants: a murder trial in {place}.",
         "When {name2} is accused of a crime, {name}, a {role}, must prove the innocence.",
         "{name} sits on the jury of {place} and begins to doubt the testimony."),
        ("The trial turns on {thing}, and {foe} will do anything to bury it.",
         "Cross-examination reveals that the key witness has lied under oath.",
         "{name2} hides a secret that could sway the jury's verdict.",
         "The lawyers clash over the evidence as the judge loses patience."),
        ("Justice is on trial.",
         "The verdict will change the town forever.",
         "In the end, the truth must speak for itself."),
        ("courtroom drama", "lawyers", "legal", "justice", "trial"),
    ),
    Topic(
        "family road trip",
        ("overworked dad", "grandmother", "teenage daughter", "stepmother", "uncle"),
        ("the Grand Canyon", "a family reunion in Florida", "a motel on Route 66",
         "a national park", "grandpa's farm in Iowa"),
        ("a broken-down camper van", "the family dog", "a wedding ring", "grandma's ashes"),
        ("a flat tyre in the desert", "a wrong turn", "a runaway camper", "a snowstorm"),
        ("Road Trip", "Highway", "Detour", "Journey", "Vacation", "Miles", "Campground"),
        ("The {surname} family piles into {thing} and drives across the country to {place}.",
         "{name}, the family's {role}, promises the kids the best summer vacation ever at {place}.",
         "To keep a promise, {name} and the siblings set out for {place} with {thing}."),
        ("A wrong turn, {foe} and a lot of bickering turn the highway trip into chaos.",
         "{name2} sulks in the back seat until the family is stranded at a roadside diner.",
         "Every motel stop brings a new disaster and a new reason to laugh.",
         "The road trip forces {name} to reconnect with the kids."),
        ("Sometimes the journey matters more than the destination.",
         "They might not survive the trip, but they will survive it together.",
         "A warm, funny adventure about what makes a family."),
        ("road trip", "family", "funny", "feel-good", "kids"),
    ),
)

GENRE_WORDS = {
    "Action": "action-packed", "Adventure": "sweeping", "Animation": "animated",
    "Children": "kid-friendly", "Comedy": "hilarious", "Crime": "gritty", "Documentary": "true",
    "Drama": "moving", "Fantasy": "magical", "Film-Noir": "shadowy", "Horror": "terrifying",
    "IMAX": "spectacular", "Musical": "musical", "Mystery": "mysterious", "Romance": "romantic",
    "Sci-Fi": "futuristic", "Thriller": "suspenseful", "War": "epic", "Western": "frontier",
}
GENERIC_TAGS = (
    "atmospheric", "based on a book", "great soundtrack", "visually appealing", "quirky",
    "Oscar (Best Cinematography)", "slow, but worth it", "sad, beautiful", "overrated",
    "predictable", "must see", "dialogue", "good acting", "boring, long", "cult film",
)
TITLE_ADJECTIVES = (
    "Last", "Silent", "Broken", "Golden", "Hidden", "Long", "Second", "Cold", "Distant",
    "Midnight", "Crimson", "Lost", "Final", "Wild", "Secret", "Burning", "Quiet", "Iron",
)
TITLE_PLACES = ("Avalon", "Brookfield", "Cairo", "Dover", "Elmwood", "Fargo", "Galway", "Harbor")
ARTICLES = ("The", "A", "An")
FOREIGN_ARTICLES = ("Le", "La", "Les", "Die", "Der", "Das", "El")
FOREIGN_TITLES = (
    ("Le Café des étoiles", "The Café of Stars"),
    ("L'Amour à la plage", None),
    ("Noël à Montréal", "Christmas in Montreal"),
    ("Señor Niño", None),
    ("Über den Wolken", "Above the Clouds"),
    ("Smörgåsbord", None),
    ("東京の夜", "Tokyo Nights"),
    ("Ça ira", None),
    ("Mañana en Sevilla", "Tomorrow in Seville"),
    ("Fräulein Grün", None),
    ("La Crème brûlée", None),
    ("Høstsonate", "Autumn Sonata II"),
    ("Żelazny most", "The Iron Bridge"),
    ("Die Nächte von Köln", "The Nights of Cologne"),
    ("Ódio", None),
    ("À bout de souffle, encore", None),
)


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One element of ``options``, drawn with ``rng``."""
    return options[int(rng.integers(len(options)))]


def person(rng: np.random.Generator) -> str:
    """A random first name."""
    return pick(rng, FIRST_NAMES)


def movielens_title(display: str) -> str:
    """MovieLens spelling of a title: a leading article moves to the end after a comma."""
    if display.startswith("L'") and len(display) > 2:
        return f"{display[2:]}, L'"
    first, _, rest = display.partition(" ")
    if rest and (first in ARTICLES or first in FOREIGN_ARTICLES):
        return f"{rest}, {first}"
    return display


def make_title(rng: np.random.Generator, topic: int, used: set[str]) -> tuple[str, str]:
    """A new ``(display title, MovieLens title without year)`` pair, unique within ``used``."""
    t = TOPICS[topic]
    for attempt in range(50):
        form = int(rng.integers(6))
        noun = pick(rng, t.title_nouns)
        adj = pick(rng, TITLE_ADJECTIVES)
        if form == 0:
            display = f"The {adj} {noun}"
        elif form == 1:
            display = f"{adj} {noun}"
        elif form == 2:
            display = f"{noun} of {pick(rng, TITLE_PLACES)}"
        elif form == 3:
            display = f"{person(rng)}'s {noun}"
        elif form == 4:
            article = "An" if adj[0] in "AEIOU" else "A"
            display = f"{article} {adj} {noun}"
        else:
            display = f"{noun}, {pick(rng, LAST_NAMES)} and Me"
        if attempt > 20:
            display = f"{display} {attempt - 18}"
        if display not in used:
            used.add(display)
            return display, movielens_title(display)
    raise RuntimeError("could not draw a unique title")  # pragma: no cover


def foreign_title(index: int) -> tuple[str, str]:
    """The ``index``-th non-ASCII title as ``(display, MovieLens title without year)``."""
    original, english = FOREIGN_TITLES[index % len(FOREIGN_TITLES)]
    suffix = "" if index < len(FOREIGN_TITLES) else f" {index // len(FOREIGN_TITLES) + 1}"
    display = original + suffix
    ml = movielens_title(display)
    if english is not None:
        ml = f"{ml} ({movielens_title(english)})"
    return display, ml


def synopsis(rng: np.random.Generator, topic: int, genres: list[str], n_sentences: int) -> str:
    """A synopsis of ``n_sentences`` (2-5) sentences on ``topic`` with a genre word or two."""
    if not 2 <= n_sentences <= 5:
        raise ValueError(f"n_sentences must be 2..5, got {n_sentences}")
    t = TOPICS[topic]
    slots = {
        "name": f"{person(rng)} {pick(rng, LAST_NAMES)}",
        "name2": person(rng),
        "surname": pick(rng, LAST_NAMES),
        "role": pick(rng, t.roles),
        "place": pick(rng, t.places),
        "thing": pick(rng, t.things),
        "foe": pick(rng, t.foes),
    }
    sentences = [pick(rng, t.openings)]
    middles = list(t.middles)
    order = rng.permutation(len(middles))
    sentences += [middles[i] for i in order[: max(0, n_sentences - 2)]]
    if genres and rng.random() < 0.7:
        word = GENRE_WORDS.get(pick(rng, genres), "gripping")
        article = "An" if word[0] in "aeiou" else "A"
        sentences.append(f"{article} {word} tale of {t.name}. {pick(rng, t.endings)}")
    else:
        sentences.append(pick(rng, t.endings))
    text = " ".join(s.format(**slots) for s in sentences)
    return text[0].upper() + text[1:]


def tag_for(rng: np.random.Generator, topic: int, genres: list[str]) -> str:
    """A user tag: topic words, a genre word or a generic remark."""
    r = rng.random()
    if r < 0.45:
        return pick(rng, TOPICS[topic].tags)
    if r < 0.65 and genres:
        return GENRE_WORDS.get(pick(rng, genres), "classic")
    return pick(rng, GENERIC_TAGS)
