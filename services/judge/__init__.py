"""The judge model server's parrot.v1 Judge API (MT-Bench-style grading of N-turn answers)."""

from services.judge.service import JudgeConfig, JudgeService

__all__ = ["JudgeConfig", "JudgeService"]
