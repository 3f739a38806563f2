"""`parrot chat`, `parrot ask`, `parrot judge`: one call to a model service."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Optional

import typer

from parrot.cli._common import TOKEN_ENV, fail, rpc

TARGET = typer.Option("127.0.0.1:50051", "--target", "-t", envvar="PARROT_TARGET", help="gRPC address of the service.")
TIMEOUT = typer.Option(300.0, help="Deadline for the call in seconds.")


def _conversation(file: Optional[str], messages: list[tuple[str, str]]) -> Any:
    from parrot.client import ConversationFileError, load_conversation
    from parrot.conversation import Message, Role
    from parrot.protoconv import messages_to_pb

    try:
        msgs = load_conversation(file) if file else []
    except ConversationFileError as e:
        fail(str(e))
    msgs += [Message(Role(r), t) for r, t in messages]
    return messages_to_pb(msgs)


def _params(max_tokens: int, temperature: Optional[float], seed: Optional[int]) -> Any:
    from parrot.v1 import conversation_pb2

    p = conversation_pb2.GenerationParams(max_tokens=max_tokens)
    if temperature is not None:
        p.temperature = temperature
    if seed is not None:
        p.seed = seed
    return p


def chat_cmd(
    message: Optional[str] = typer.Argument(None, help="The user message. Omit to chat interactively."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Conversation so far (JSON; '-' = stdin)."),
    system: Optional[str] = typer.Option(None, help="A system message to start with."),
    max_tokens: int = typer.Option(256, help="Most new tokens."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    stream: bool = typer.Option(True, help="Print tokens as they arrive."),
    target: str = TARGET, token_env: str = TOKEN_ENV, timeout: float = TIMEOUT,
) -> None:
    """Talk to the responder (parrot.v1.Responder)."""
    from parrot.v1 import responder_pb2, responder_pb2_grpc

    history: list[tuple[str, str]] = [("system", system)] if system else []
    interactive = message is None and sys.stdin.isatty()
    if message is None and not interactive:
        fail("give a MESSAGE (or run in a terminal to chat interactively)")

    async def turn(text: str) -> str:
        history.append(("user", text))
        request = responder_pb2.RespondRequest(conversation=_conversation(file, history),
                                               params=_params(max_tokens, temperature, seed))

        async def fn(ch: Any, md: Any) -> str:
            stub = responder_pb2_grpc.ResponderStub(ch)
            if not stream:
                r = await stub.Respond(request, metadata=md, timeout=timeout)
                typer.echo(r.text)
                return r.text
            parts = []
            async for chunk in stub.RespondStream(request, metadata=md, timeout=timeout):
                parts.append(chunk.delta)
                typer.echo(chunk.delta, nl=False)
            typer.echo()
            return "".join(parts)

        answer = await rpc(target, token_env, fn)
        history.append(("assistant", answer))
        return answer

    async def run() -> None:
        if not interactive:
            await turn(message)  # type: ignore[arg-type]
            return
        typer.echo("(empty line or Ctrl-D to quit)")
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:
                return
            if not text:
                return
            await turn(text)

    asyncio.run(run())


def ask_cmd(
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Conversation so far (JSON; '-' = stdin); must end with an answer."),
    query: Optional[str] = typer.Option(None, "--query", "-q", help="First user query (with --answer, instead of --file)."),
    answer: Optional[str] = typer.Option(None, "--answer", "-a", help="The assistant's answer to --query."),
    persona: str = typer.Option("", help="Who is asking (hint)."),
    topic: str = typer.Option("", help="Where the conversation should go (hint)."),
    candidates: int = typer.Option(1, "--candidates", "-n", help="How many follow-up questions."),
    max_tokens: int = typer.Option(64, help="Most new tokens per question."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (asker default if unset)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    target: str = TARGET, token_env: str = TOKEN_ENV, timeout: float = TIMEOUT,
) -> None:
    """Ask the asker for the user's next turn (parrot.v1.Asker)."""
    from parrot.v1 import asker_pb2, asker_pb2_grpc

    pairs: list[tuple[str, str]] = []
    if query is not None or answer is not None:
        if query is None or answer is None:
            fail("--query and --answer go together")
        pairs = [("user", query), ("assistant", answer)]  # type: ignore[list-item]
    if not file and not pairs:
        fail("give --file, or --query with --answer")
    request = asker_pb2.AskRequest(conversation=_conversation(file, pairs), params=_params(max_tokens, temperature, seed),
                                   persona=persona, topic=topic, num_candidates=candidates)

    async def fn(ch: Any, md: Any) -> None:
        r = await asker_pb2_grpc.AskerStub(ch).Ask(request, metadata=md, timeout=timeout)
        for c in r.candidates:
            typer.echo(c.text)

    asyncio.run(rpc(target, token_env, fn))


def judge_cmd(
    file: str = typer.Argument(..., help="Conversation with the answer to grade (JSON; '-' = stdin)."),
    versus: Optional[str] = typer.Option(None, help="A second conversation (same user turns): compare pairwise."),
    turn: int = typer.Option(0, help="1-based user turn whose answer is judged; 0 = last."),
    reference: str = typer.Option("", help="Reference answer for the judged turn."),
    prompt: str = typer.Option("", help="Judge prompt name (default by mode and reference)."),
    max_tokens: int = typer.Option(256, help="Most tokens for the judge's explanation."),
    as_json: bool = typer.Option(False, "--json", help="Print the full response as JSON."),
    target: str = TARGET, token_env: str = TOKEN_ENV, timeout: float = TIMEOUT,
) -> None:
    """Grade an answer 1-10, or compare two answers (parrot.v1.Judge)."""
    from google.protobuf import json_format

    from parrot.v1 import judge_pb2, judge_pb2_grpc

    params = _params(max_tokens, None, None)

    async def fn(ch: Any, md: Any) -> None:
        stub = judge_pb2_grpc.JudgeStub(ch)
        if versus:
            r = await stub.ComparePair(judge_pb2.ComparePairRequest(
                conversation_a=_conversation(file, []), conversation_b=_conversation(versus, []), turn=turn,
                reference_answer=reference, prompt_name=prompt, params=params), metadata=md, timeout=timeout)
            summary = f"winner: {judge_pb2.PairWinner.Name(r.winner).removeprefix('PAIR_WINNER_')}"
        else:
            r = await stub.GradeSingle(judge_pb2.GradeSingleRequest(
                conversation=_conversation(file, []), turn=turn, reference_answer=reference, prompt_name=prompt,
                params=params), metadata=md, timeout=timeout)
            summary = f"score: {r.score:.2f}  (turn {r.turn}, {judge_pb2.ScoreMethod.Name(r.method)})\n{r.explanation}"
        typer.echo(json_format.MessageToJson(r, preserving_proto_field_name=True) if as_json else summary)

    asyncio.run(rpc(target, token_env, fn))


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
    app.command("ask")(ask_cmd)
    app.command("judge")(judge_cmd)
