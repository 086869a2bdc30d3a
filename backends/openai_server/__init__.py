"""The one OpenAI-compatible serving layer of the in-house engines (hf, llamacpp).

Written once here: request models and their checks (`requests`), the error envelope
(`errors`), bearer auth as raw ASGI middleware (`auth`), the listening socket (`listen`),
logprob formatting (`logprobs`), stop-string search and hold-back (`stops`), response bodies,
SSE framing and usage chunks (`responses`), and the FastAPI app with its routes (`app`).
An engine supplies a `ServedEngine` (app.py): what it is, the optional request fields it
honours, and its own generation for /v1/completions and /v1/chat/completions.
"""
