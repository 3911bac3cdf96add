"""Wire formats: one module per format, the only code that knows its JSON shapes.

On one side the gateway's internal types (`types.ChatRequest`, `Completion`, `Usage`, the error
tree); on the other the bytes and JSON a client or an upstream exchanges. `wire.openai` is the
OpenAI chat-completions format (both directions: what upstreams send and what clients receive);
`wire.anthropic*` the Anthropic Messages format, `wire.responses*` the OpenAI Responses API and
`wire.embeddings` the embeddings endpoint. Routing, caching, accounting and the responder call
their named functions (`usage_of`, `finish_reason`, `chunk_has_content`, `answer_text`,
`sse_frame`...) and never index `choices` or `delta` themselves.
"""
