"""Programmatic instruction checks per turn, in the style of IFEval / Multi-IF.

``registry`` holds the typed instruction registry, ``checks`` the instructions themselves (our
own code), ``scoring`` the per-turn record format, accumulation across turns, and strict/loose
accuracy at prompt and instruction level.
"""

from parrot.instructions import checks as _checks  # noqa: F401  (registers the instructions)
from parrot.instructions.registry import (
    REGISTRY,
    RELATIONS,
    Instruction,
    InstructionError,
    Param,
    instruction_ids,
    make_instruction,
)
from parrot.instructions.scoring import (
    InstructionSpec,
    accumulate,
    check_session,
    check_turn,
    instruction_summary,
    loose_variants,
    parse_session_instructions,
    parse_turn_instructions,
)

__all__ = [
    "REGISTRY",
    "RELATIONS",
    "Instruction",
    "InstructionError",
    "InstructionSpec",
    "Param",
    "accumulate",
    "check_session",
    "check_turn",
    "instruction_ids",
    "instruction_summary",
    "loose_variants",
    "make_instruction",
    "parse_session_instructions",
    "parse_turn_instructions",
]
