"""parrot.v1.Responder: answers the last user turn of a conversation with the full history."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

from parrot.backends.base import Backend, GenerationRequest, GenerationResult, StreamEvent
from parrot.conversation import GenerationParams, InputLimits, Message, Role
from parrot.metrics import STAGE_LATENCY, child
from parrot.protoconv import conversation_from_pb, finish_reason_to_pb, params_from_pb, usage_to_pb
from parrot.v1 import responder_pb2, responder_pb2_grpc


@dataclass(frozen=True)
class ResponderConfig:
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when a request leaves it 0."})
    limits: InputLimits = field(default_factory=InputLimits, metadata={"help": "Request size limits."})


class ResponderService(responder_pb2_grpc.ResponderServicer):
    def __init__(self, backend: Backend, config: ResponderConfig) -> None:
        self.backend = backend
        self.config = config

    # -- plain async API (used by gRPC, KServe REST and the OpenAI endpoint) -------------

    def parse(self, request: responder_pb2.RespondRequest) -> GenerationRequest:
        conv = conversation_from_pb(request.conversation, last_role=Role.USER, limits=self.config.limits)
        params = params_from_pb(request.params, default_max_tokens=self.config.default_max_tokens, limits=self.config.limits)
        return GenerationRequest(messages=conv.messages, params=params)

    async def respond(self, messages: Sequence[Message], params: GenerationParams, prefill: str = "") -> GenerationResult:
        t0 = time.monotonic()
        (result,) = await self.backend.generate([GenerationRequest(messages=list(messages), params=params, prefill=prefill)])
        child(STAGE_LATENCY, self.backend.model_name, "respond").observe(time.monotonic() - t0)
        return result

    def respond_stream(self, messages: Sequence[Message], params: GenerationParams, prefill: str = "") -> AsyncIterator[StreamEvent]:
        return self.backend.stream(GenerationRequest(messages=list(messages), params=params, prefill=prefill))

    # -- gRPC --------------------------------------------------------------------------

    async def Respond(self, request: responder_pb2.RespondRequest, context: Any) -> responder_pb2.RespondResponse:
        req = self.parse(request)
        result = await self.respond(req.messages, req.params)
        return responder_pb2.RespondResponse(
            text=result.text,
            finish_reason=finish_reason_to_pb(result.finish_reason),
            usage=usage_to_pb(result.prompt_tokens, result.completion_tokens),
            model=self.backend.model_name,
            conversation_id=request.conversation.id,
        )

    async def RespondStream(self, request: responder_pb2.RespondRequest, context: Any) -> AsyncIterator[responder_pb2.RespondChunk]:
        req = self.parse(request)
        async for event in self.respond_stream(req.messages, req.params):
            if event.result is None:
                if event.delta:
                    yield responder_pb2.RespondChunk(delta=event.delta)
                continue
            yield responder_pb2.RespondChunk(
                delta=event.delta,
                finish_reason=finish_reason_to_pb(event.result.finish_reason),
                usage=usage_to_pb(event.result.prompt_tokens, event.result.completion_tokens),
                model=self.backend.model_name,
            )
