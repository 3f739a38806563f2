"""What every CLI command group shares: how a command fails, the token and coordinator options, and
the one wrapper around a gRPC call (auth metadata in, a clear error out)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, NoReturn

import typer

COORDINATOR = typer.Option("127.0.0.1:50060", "--coordinator", "-c", envvar="PARROT_COORDINATOR",
                           help="gRPC address of the coordinator.")
TOKEN_ENV = typer.Option("PARROT_AUTH_TOKEN", help="Env var holding the bearer token to send (if set).")


def fail(message: str) -> NoReturn:
    """Ends the command with ``error: <message>`` on stderr and exit status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def coordinator_stub(channel: Any) -> Any:
    from parrot.v1 import coordinator_pb2_grpc

    return coordinator_pb2_grpc.CoordinatorStub(channel)


async def rpc(target: str, token_env: str, fn: Callable[[Any, Any], Awaitable[Any]],
              stub: Callable[[Any], Any] = lambda channel: channel) -> Any:
    """``await fn(stub(channel), metadata)`` on a channel to ``target``, with the bearer token of
    ``token_env``; a token problem or an RPC error ends the command naming it."""
    import grpc

    from parrot.client import auth_metadata, channel, rpc_error_text
    from parrot.errors import ConfigError

    try:
        md = auth_metadata(token_env)
    except ConfigError as e:
        fail(str(e))
    async with channel(target) as ch:
        try:
            return await fn(stub(ch), md)
        except grpc.aio.AioRpcError as e:
            fail(rpc_error_text(e))
