"""Synthetic harmony tasks for the tiny chat model: questions, worked analysis, final answers, answer checks.

Pure Python (no torch): the training script, the accuracy-by-mode script and tests all import it.

    task      question                               analysis (grows with the reasoning effort)       final
    sum       "What is 37 + 48?"                     ones 7+8=15 carry 1, tens 3+4+1=8 -> 85           "37 + 48 = 85."
    diff      "What is 52 - 17?"                     ones borrow 12-7=5, tens 5-1-1=3 -> 35            "52 - 17 = 35."
    capital   "What is the capital of France?"       France, Europe -> Paris                          "The capital of France is Paris."
    letters   'How many letters are in "apple"?'     a 1, p 2, p 3, l 4, e 5 -> 5                      'The word "apple" has 5 letters.'
    chat      "Who are you?"                         a fixed exchange                                 a fixed reply

Held out from training (so the held-out accuracy measures generalisation, not recall): every number pair
(a, b) whose hash falls in the held-out tenth, one question wording per country (the fact itself must be
seen: a capital cannot be inferred), a fifth of the letter-count words. Fixed chat exchanges are recalled
by design; their held-out variants differ in date and reasoning effort only.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

REASONING = ("low", "medium", "high")
TASKS = ("sum", "diff", "capital", "letters", "chat")

CAPITALS: tuple[tuple[str, str, str], ...] = (  # country, capital, continent
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Austria", "Vienna", "Europe"),
    ("Poland", "Warsaw", "Europe"), ("Greece", "Athens", "Europe"), ("Sweden", "Stockholm", "Europe"),
    ("Norway", "Oslo", "Europe"), ("Finland", "Helsinki", "Europe"), ("Denmark", "Copenhagen", "Europe"),
    ("Ireland", "Dublin", "Europe"), ("Hungary", "Budapest", "Europe"), ("Belgium", "Brussels", "Europe"),
    ("Netherlands", "Amsterdam", "Europe"), ("Switzerland", "Bern", "Europe"), ("Czechia", "Prague", "Europe"),
    ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"), ("India", "New Delhi", "Asia"),
    ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"), ("Indonesia", "Jakarta", "Asia"),
    ("South Korea", "Seoul", "Asia"), ("Turkey", "Ankara", "Asia"), ("Iran", "Tehran", "Asia"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Morocco", "Rabat", "Africa"), ("Ghana", "Accra", "Africa"), ("Ethiopia", "Addis Ababa", "Africa"),
    ("Canada", "Ottawa", "North America"), ("Mexico", "Mexico City", "North America"),
    ("United States", "Washington", "North America"), ("Cuba", "Havana", "North America"),
    ("Brazil", "Brasilia", "South America"), ("Argentina", "Buenos Aires", "South America"),
    ("Peru", "Lima", "South America"), ("Chile", "Santiago", "South America"), ("Colombia", "Bogota", "South America"),
    ("Australia", "Canberra", "Oceania"), ("New Zealand", "Wellington", "Oceania"),
)

CAPITAL_QUESTIONS = ("What is the capital of {c}?", "What's the capital of {c}?", "Name the capital city of {c}.",
                     "Which city is the capital of {c}?")

WORDS = tuple("""apple house water green river stone cloud music light paper table chair window garden
bread phone money field horse tiger zebra lemon mango grape melon cherry peach onion carrot potato tomato
train plane truck rocket bottle candle pencil mirror ladder basket bucket jacket button pocket rabbit monkey
turtle dragon castle forest desert island planet winter summer spring autumn morning evening sunday monday
friday yellow purple orange silver golden little simple gentle happy sunny rainy windy snowy quick brown lazy
dog cat cow pig hen fox owl bee ant bat sun moon star sky sea bay map cup pen box key hat bag bed car bus
kite lamp ring ship shoe sock book door wall roof road hill lake pond rain snow wind fire gold salt milk
rice corn bean tree leaf rose seed root bird fish frog duck goat lion bear wolf deer seal crab king queen
robot pilot nurse baker judge clown actor doctor farmer singer artist hunter writer teacher dancer sailor
number letter answer question system model token expert export verify engine""".split())

CHAT: tuple[tuple[str, str, str], ...] = (  # user, analysis (medium), final
    ("Hello", "The user greets me. Greet back and offer help.",
     "Hello! I can add and subtract numbers, name capitals and count letters. Ask me something."),
    ("Hi", "A greeting. Say hello.", "Hi! Ask me a sum, a capital or a letter count."),
    ("Who are you?", "The user asks who I am. I am a tiny model.",
     "I am a tiny gpt-oss model trained for the mxport demo."),
    ("What can you do?", "List what I can do.",
     "I can add and subtract small numbers, name capitals and count the letters of a word."),
    ("Thank you", "The user thanks me. Reply politely.", "You are welcome!"),
    ("How are you?", "A friendly question. Answer briefly.", "I am fine, thank you. What can I do for you?"),
    ("Goodbye", "The user says goodbye.", "Goodbye! Have a nice day."),
    ("Tell me a joke.", "A joke about numbers.", "Why was six afraid of seven? Because seven ate nine."),
)

SUM_QUESTIONS = ("What is {a} + {b}?", "{a} + {b} = ?", "Compute {a} plus {b}.", "What is {a} plus {b}?")
DIFF_QUESTIONS = ("What is {a} - {b}?", "{a} - {b} = ?", "Compute {a} minus {b}.", "What is {a} minus {b}?")
MAX_NUMBER = 99  # operands are 0..99 (results up to 198)


@dataclass(frozen=True)
class Example:
    task: str
    question: str
    analysis: str
    final: str
    answer: str  # what check_answer looks for in a final text
    reasoning: str


def _held_out(key: str, tenths: int) -> bool:
    return zlib.crc32(key.encode()) % 10 < tenths


def pair_held_out(a: int, b: int, op: str) -> bool:
    return _held_out(f"{op}:{a}:{b}", 1)


def word_held_out(word: str) -> bool:
    return _held_out(f"word:{word}", 2)


def capital_question_held_out(country_index: int) -> int:
    """The index of the question wording held out for this country."""
    return country_index % len(CAPITAL_QUESTIONS)


# ---- worked analyses --------------------------------------------------------------------------------------------

def _sum_steps(a: int, b: int) -> tuple[str, int]:
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    s = a0 + b0
    t = a1 + b1 + s // 10
    return f"ones {a0}+{b0}={s}, write {s % 10} carry {s // 10}; tens {a1}+{b1}+{s // 10}={t}", a + b


def _diff_steps(a: int, b: int) -> tuple[str, int]:
    a1, a0, b1, b0 = a // 10, a % 10, b // 10, b % 10
    if a0 >= b0:
        ones, borrow = f"ones {a0}-{b0}={a0 - b0}, borrow 0", 0
    else:
        ones, borrow = f"ones {a0}<{b0} so borrow, 1{a0}-{b0}={10 + a0 - b0}", 1
    return f"{ones}; tens {a1}-{b1}-{borrow}={a1 - b1 - borrow}", a - b


def arithmetic(op: str, a: int, b: int, reasoning: str, template: int) -> Example:
    sign = "+" if op == "sum" else "-"
    steps, r = (_sum_steps if op == "sum" else _diff_steps)(a, b)
    question = (SUM_QUESTIONS if op == "sum" else DIFF_QUESTIONS)[template].format(a=a, b=b)
    if reasoning == "low":
        analysis = f"{a} {sign} {b}: {steps}. So {r}."
    else:
        verb = "add" if op == "sum" else "subtract"
        analysis = f"The user wants {a} {sign} {b}. Work digit by digit: {steps}. So {a} {sign} {b} = {r}."
        if reasoning == "high":
            inverse = f"{r} - {b} = {a}" if op == "sum" else f"{r} + {b} = {a}"
            analysis += f" Check the other way: {inverse}. Good, {verb}ing gives {r}."
    return Example(op, question, analysis, f"{a} {sign} {b} = {r}.", str(r), reasoning)


def capital(index: int, reasoning: str, template: int) -> Example:
    country, city, continent = CAPITALS[index]
    question = CAPITAL_QUESTIONS[template].format(c=country)
    if reasoning == "low":
        analysis = f"Capital of {country}: {city}."
    else:
        analysis = f"The user asks for the capital of {country}. {country} is in {continent}. Its capital is {city}."
        if reasoning == "high":
            analysis += f" I am sure: the capital of {country} is {city}."
    return Example("capital", question, analysis, f"The capital of {country} is {city}.", city, reasoning)


def letters(word: str, reasoning: str) -> Example:
    counted = ", ".join(f"{ch} {i + 1}" for i, ch in enumerate(word))
    n = len(word)
    question = f'How many letters are in the word "{word}"?'
    if reasoning == "low":
        analysis = f"{counted}. {n} letters."
    else:
        analysis = f'Count the letters of "{word}" one by one: {counted}. That is {n} letters.'
        if reasoning == "high":
            analysis += f" The last letter is number {n}, so the count is {n}."
    return Example("letters", question, analysis, f'The word "{word}" has {n} letters.', str(n), reasoning)


def chat(index: int, reasoning: str) -> Example:
    user, why, final = CHAT[index]
    analysis = {"low": "Chat.", "medium": why, "high": f"{why} Keep it short and friendly."}[reasoning]
    return Example("chat", user, analysis, final, final, reasoning)


# ---- answer checks ----------------------------------------------------------------------------------------------

_INT = re.compile(r"-?\d+")


def check_answer(task: str, final: str, answer: str) -> bool:
    """Whether a final-channel text gives the answer: the last integer for numbers, the city for capitals,
    the exact text for fixed chat replies."""
    final = final.strip()
    if task in ("sum", "diff", "letters"):
        found = _INT.findall(final)
        return bool(found) and found[-1] == answer
    if task == "capital":
        return re.search(rf"\b{re.escape(answer)}\b", final) is not None and all(
            city == answer or re.search(rf"\b{re.escape(city)}\b", final) is None for _, city, _ in CAPITALS)
    return final == answer


# ---- sampling ---------------------------------------------------------------------------------------------------

def random_date(rng: random.Random) -> str:
    return f"{rng.randint(2024, 2028)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def sample(rng: random.Random, task: str, held_out: bool, reasoning: str | None = None) -> Example:
    """One example of a task from the training split (held_out=False) or the held-out split."""
    reasoning = reasoning or rng.choice(REASONING)
    if task in ("sum", "diff"):
        while True:
            a, b = rng.randint(0, MAX_NUMBER), rng.randint(0, MAX_NUMBER)
            if task == "diff" and a < b:
                a, b = b, a
            if pair_held_out(a, b, task) == held_out:
                return arithmetic(task, a, b, reasoning, rng.randrange(len(SUM_QUESTIONS)))
    if task == "capital":
        i = rng.randrange(len(CAPITALS))
        out = capital_question_held_out(i)
        t = out if held_out else rng.choice([k for k in range(len(CAPITAL_QUESTIONS)) if k != out])
        return capital(i, reasoning, t)
    if task == "letters":
        words = [w for w in WORDS if word_held_out(w) == held_out]
        return letters(rng.choice(words), reasoning)
    if task == "chat":
        return chat(rng.randrange(len(CHAT)), reasoning)
    raise ValueError(f"unknown task {task!r}")


def held_out_set(n_per_task: int, seed: int = 1234, tasks: tuple[str, ...] = TASKS) -> list[tuple[Example, str]]:
    """(example, date) pairs of the held-out split, n per task, deterministic."""
    rng = random.Random(seed)
    return [(sample(rng, t, True), random_date(rng)) for t in tasks for _ in range(n_per_task)]
