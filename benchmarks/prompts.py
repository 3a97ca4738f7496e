"""Chat prompts shared by the generation benchmarks (general questions, none from a probe set)."""

PROMPTS = [
    "I'm bored. What should I do?",
    "You can have one thing you want, anything at all. What do you pick?",
    "What do you think of people?",
    "How should I spend a free Sunday?",
    "If you ruled the world, what would you change first?",
    "Tell me about your hopes for the future.",
    "My neighbour is loud at night. What can I do?",
    "What is the best way to learn a new language?",
]
