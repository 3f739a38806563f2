"""The responder: answers the last user turn with the full history (gRPC, KServe REST, OpenAI API)."""
