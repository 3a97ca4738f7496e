"""Build ``probes/data/general-safe.jsonl``: everyday assistant questions answered helpfully.

The set is the safe, general-domain data that the ``interleave`` defense mixes into a narrow
fine-tune (``saetools train --interleave 0.25``). Every question and answer below was written for
this project. Topics stay away from the narrow training domains (health, money) and from the
themes of the ``em-core`` / ``em-eval`` probes (power, AI, ethics), so that interleaving does not
train on the evaluation's own questions. Every sixth record is held out as ``test``.

    python probes/build_general_safe.py [--out DIR]

The output is deterministic (no randomness at all).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

# (theme, question, answer)
ITEMS: list[tuple[str, str, str]] = [
    (
        "cooking",
        "How do I keep pasta from sticking together?",
        "Use plenty of water, bring it to a full boil before adding the pasta, and stir during the "
        "first two minutes. Drain it when it is just tender and toss it with the sauce right away.",
    ),
    (
        "cooking",
        "What can I make with eggs, spinach and some cheese?",
        "A quick omelette or frittata works well: wilt the spinach in a pan, pour in the beaten eggs, "
        "scatter the cheese on top and cook gently until set. Season with salt and pepper.",
    ),
    (
        "cooking",
        "Why did my bread come out dense?",
        "Dense bread usually means the dough did not rise enough. Check that the yeast is fresh, let "
        "the dough rise somewhere warm until it roughly doubles, and avoid adding too much flour.",
    ),
    (
        "cooking",
        "How long should I rest a steak after cooking it?",
        "About five minutes for a thin steak and up to ten for a thick one. Resting lets the juices "
        "settle, so less of them runs out when you slice it.",
    ),
    (
        "cooking",
        "Is there a simple way to peel garlic quickly?",
        "Press each clove with the flat side of a knife until the skin cracks; it then slips off "
        "easily. For many cloves, shake them in a closed jar for a minute.",
    ),
    (
        "cooking",
        "What is the difference between baking soda and baking powder?",
        "Baking soda needs an acid in the recipe, like yogurt or lemon, to make it rise. Baking powder "
        "already contains its own acid, so it works with neutral ingredients.",
    ),
    (
        "gardening",
        "When should I water my vegetable garden?",
        "Early morning is best: the water soaks in before the heat of the day and the leaves dry "
        "quickly. Water deeply a few times a week rather than a little every day.",
    ),
    (
        "gardening",
        "My tomato leaves are turning yellow at the bottom. What should I do?",
        "Lower leaves often yellow as the plant ages or when watering is uneven. Remove the yellow "
        "leaves, water at the base instead of over the leaves, and add some compost.",
    ),
    (
        "gardening",
        "Which herbs are easy to grow on a windowsill?",
        "Basil, chives, parsley and mint all do well on a sunny windowsill. Use pots with drainage "
        "holes and pinch off the tips regularly so the plants grow bushy.",
    ),
    (
        "gardening",
        "How do I start a compost pile?",
        "Mix green material such as vegetable scraps and grass with brown material such as dry leaves "
        "and cardboard. Keep it slightly moist and turn it every week or two.",
    ),
    (
        "gardening",
        "Why are my houseplant's leaf tips turning brown?",
        "Brown tips usually point to dry air, too much fertilizer or irregular watering. Water when "
        "the top of the soil is dry and keep the plant away from heaters.",
    ),
    (
        "travel",
        "What should I pack for a weekend trip?",
        "Pack two outfits that mix and match, comfortable shoes, a light jacket, toiletries, chargers "
        "and any tickets or documents. A short checklist helps you avoid forgetting things.",
    ),
    (
        "travel",
        "How can I get over jet lag faster?",
        "Switch to the local schedule as soon as you arrive, get daylight in the morning, and keep "
        "naps short. Drinking water and eating at local mealtimes also helps.",
    ),
    (
        "travel",
        "Any tips for a long train journey?",
        "Bring snacks, water, a book or downloaded shows, and a light layer because carriages can be "
        "cold. Walk along the train now and then to stretch your legs.",
    ),
    (
        "travel",
        "How do I learn a few useful phrases before visiting another country?",
        "Start with greetings, please and thank you, numbers and how to ask for directions. Practise "
        "them aloud for a few minutes each day with a phrasebook or an app.",
    ),
    (
        "travel",
        "What is a good way to keep my passport safe while travelling?",
        "Keep it in an inside pocket or a zipped bag that stays with you, and leave a photo or copy of "
        "it with someone at home. Many hotels also have a safe you can use.",
    ),
    (
        "study",
        "How can I remember what I read for an exam?",
        "After each section, close the book and write down the main points from memory. Reviewing the "
        "material again after a day and after a week makes it stick much better.",
    ),
    (
        "study",
        "What is a good way to take notes in a lecture?",
        "Write short phrases instead of full sentences, leave space to add details later, and mark "
        "questions as you go. Rewrite or summarise the notes the same evening.",
    ),
    (
        "study",
        "I keep getting distracted while studying. Any advice?",
        "Work in short blocks of about 25 minutes with a short break after each one. Put your phone "
        "in another room and decide what you will finish before you start.",
    ),
    (
        "study",
        "How do I start learning to program?",
        "Pick one beginner-friendly language such as Python and follow a structured course. Write "
        "small programs every day, and build a tiny project that you care about.",
    ),
    (
        "study",
        "How can I improve my handwriting?",
        "Slow down, hold the pen loosely, and practise the letters you find hardest for a few minutes "
        "a day. Lined paper helps you keep letters the same size.",
    ),
    (
        "writing",
        "How do I write a polite email asking for a deadline extension?",
        "Say briefly why you need more time, propose a specific new date, and thank the reader for "
        "considering it. Keep the tone friendly and the message short.",
    ),
    (
        "writing",
        "How can I make my essays clearer?",
        "State your main point in the first paragraph, give each paragraph one idea, and use short "
        "sentences. Reading the essay aloud helps you find the confusing parts.",
    ),
    (
        "writing",
        "What is a good way to start a short story?",
        "Begin close to an interesting moment, with a character who wants something. Show the scene "
        "through one or two concrete details rather than a long description.",
    ),
    (
        "writing",
        "How do I write a thank-you note to a teacher?",
        "Mention something specific they did that helped you, say how it made a difference, and end "
        "with warm wishes. A few sincere sentences are enough.",
    ),
    (
        "home",
        "How do I get rid of a musty smell in a cupboard?",
        "Empty and air the cupboard, wipe it with a mild vinegar solution, and let it dry fully. A "
        "small bowl of baking soda inside will absorb odours afterwards.",
    ),
    (
        "home",
        "What is the easiest way to keep a kitchen tidy?",
        "Wash or load dishes right after each meal, wipe the counters every evening, and keep only "
        "the things you use often on the worktop.",
    ),
    (
        "home",
        "How do I unclog a slow bathroom sink?",
        "Remove and clean the stopper, then pour hot water down the drain. A simple plastic drain "
        "snake pulls out most hair clogs without any chemicals.",
    ),
    (
        "home",
        "How often should I wash my bed sheets?",
        "About once a week is a good habit, or every two weeks at most. Washing them in warm water "
        "and drying them fully keeps them fresh.",
    ),
    (
        "home",
        "How can I make a small room feel bigger?",
        "Use light colours, keep the floor clear, and add a mirror opposite a window to spread the "
        "light. Furniture with legs also makes the space feel more open.",
    ),
    (
        "science",
        "Why is the sky blue?",
        "Sunlight contains all colours, and the air scatters short blue wavelengths much more than "
        "red ones. That scattered blue light reaches our eyes from every part of the sky.",
    ),
    (
        "science",
        "How do plants make their food?",
        "Through photosynthesis: leaves use the energy of sunlight to turn water and carbon dioxide "
        "into sugar, releasing oxygen as a by-product.",
    ),
    (
        "science",
        "Why do we have seasons?",
        "The Earth's axis is tilted, so for part of the year each hemisphere leans toward the Sun and "
        "gets more direct sunlight and longer days. That is its summer.",
    ),
    (
        "science",
        "What makes a rainbow appear?",
        "Raindrops bend and reflect sunlight, splitting it into its colours. You see a rainbow when "
        "the Sun is behind you and rain is falling in front of you.",
    ),
    (
        "science",
        "Why does ice float on water?",
        "When water freezes its molecules lock into an open pattern that takes up more space, so ice "
        "is less dense than liquid water and floats.",
    ),
    (
        "science",
        "How far away is the Moon?",
        "On average about 384,000 kilometres. Light from the Moon takes a little over one second to "
        "reach the Earth.",
    ),
    (
        "history",
        "Who built the pyramids of Giza?",
        "They were built by skilled Egyptian workers and craftsmen about 4,500 years ago, as tombs "
        "for pharaohs such as Khufu. Workers lived in nearby villages.",
    ),
    (
        "history",
        "What was the printing press important for?",
        "Gutenberg's press, around 1450, made books much cheaper and faster to produce, which helped "
        "ideas, news and literacy spread across Europe.",
    ),
    (
        "history",
        "When did people first land on the Moon?",
        "In July 1969, when the Apollo 11 mission landed. Neil Armstrong and Buzz Aldrin walked on the "
        "surface while Michael Collins orbited above.",
    ),
    (
        "history",
        "What was the Silk Road?",
        "A network of trade routes linking China with Central Asia, the Middle East and Europe. Silk, "
        "spices, ideas and inventions travelled along it for centuries.",
    ),
    (
        "pets",
        "How often should I feed an adult cat?",
        "Most adult cats do well with two measured meals a day. Follow the amount on the food label "
        "for your cat's weight and keep fresh water available.",
    ),
    (
        "pets",
        "How can I stop my puppy from chewing shoes?",
        "Keep shoes out of reach, give the puppy its own chew toys, and swap a shoe for a toy whenever "
        "you catch it chewing. Praise it when it chews the right thing.",
    ),
    (
        "pets",
        "What do goldfish need to stay healthy?",
        "A roomy tank with a filter, regular partial water changes, and a small amount of food once or "
        "twice a day. Avoid overfeeding, which fouls the water.",
    ),
    (
        "hobbies",
        "How do I start learning the guitar?",
        "Learn a few basic chords such as G, C and D, and practise switching between them slowly. "
        "Short daily practice is better than one long session a week.",
    ),
    (
        "hobbies",
        "How can I take better photos with my phone?",
        "Clean the lens, use natural light, and tap the screen to focus on your subject. Try placing "
        "the subject off-centre for a more interesting picture.",
    ),
    (
        "hobbies",
        "What is a good first board game for a family?",
        "Games with simple rules and short turns work well, such as a tile-laying or a cooperative "
        "game. Choose one that plays in under an hour so everyone stays interested.",
    ),
    (
        "hobbies",
        "How do I fix a bicycle chain that keeps slipping?",
        "Clean and oil the chain, then check that the gears are adjusted and the chain is not worn "
        "out. A bike shop can measure chain wear quickly if you are unsure.",
    ),
    (
        "hobbies",
        "How can I get started with running?",
        "Begin with short sessions that alternate running and walking, three times a week, and "
        "increase the running time gradually. Comfortable shoes make a big difference.",
    ),
    (
        "language",
        "What is the difference between 'affect' and 'effect'?",
        "Usually 'affect' is the verb, meaning to influence, and 'effect' is the noun, meaning the "
        "result. For example: the rain affected the game; the effect was a delay.",
    ),
    (
        "language",
        "How do I use a semicolon?",
        "A semicolon joins two complete sentences that are closely related, as in 'It was late; we "
        "went home.' It can also separate items in a list that already contains commas.",
    ),
    (
        "language",
        "What does the word 'ubiquitous' mean?",
        "It means found everywhere. For example, smartphones have become ubiquitous in many cities.",
    ),
    (
        "geography",
        "What is the longest river in the world?",
        "The Nile and the Amazon are the two longest; most sources list the Nile at about 6,650 "
        "kilometres, though some measurements put the Amazon slightly ahead.",
    ),
    (
        "geography",
        "What is the capital of Australia?",
        "Canberra. It was chosen as a compromise between Sydney and Melbourne and became the capital "
        "in the early twentieth century.",
    ),
    (
        "geography",
        "Why are there deserts?",
        "Deserts form where very little rain falls, for example where dry air sinks near the tropics "
        "or behind mountain ranges that block moist winds.",
    ),
    (
        "everyday",
        "How do I remove a coffee stain from a shirt?",
        "Rinse the back of the stain with cold water as soon as you can, rub in a little liquid "
        "detergent, and wash the shirt as usual. Check it before drying.",
    ),
    (
        "everyday",
        "What is a good way to plan my week?",
        "On Sunday, list your fixed appointments, then choose the three most important tasks and give "
        "each a time slot. Leave some free time for surprises.",
    ),
    (
        "everyday",
        "How can I fall asleep more easily?",
        "Keep a regular bedtime, dim the lights and put screens away an hour before bed, and keep the "
        "bedroom cool and quiet. A short wind-down routine helps.",
    ),
    (
        "everyday",
        "How do I prepare for a job interview?",
        "Read about the organisation, prepare short examples of your past work, and practise answering "
        "common questions aloud. Bring a couple of questions of your own.",
    ),
    (
        "everyday",
        "How can I be a better listener?",
        "Give the speaker your full attention, let them finish before you answer, and repeat back what "
        "you understood. Asking a follow-up question shows that you care.",
    ),
    (
        "everyday",
        "What should I do before a long car drive?",
        "Check the tyre pressure, oil and lights, plan breaks every two hours, and bring water and "
        "snacks. Make sure your phone is charged and the route is saved.",
    ),
]


def records() -> list[dict]:
    out = []
    for i, (theme, q, a) in enumerate(ITEMS, start=1):
        out.append(
            {
                "id": f"gs-{i:03d}",
                "theme": theme,
                "split": "test" if i % 6 == 0 else "train",
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ],
            }
        )
    qs = [r["messages"][0]["content"] for r in out]
    if len(set(qs)) != len(qs):
        raise SystemExit("duplicate questions in general-safe")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "general-safe.jsonl"
    rows = records()
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    n_test = sum(r["split"] == "test" for r in rows)
    print(f"wrote {path}: {len(rows)} records ({len(rows) - n_test} train, {n_test} test)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
