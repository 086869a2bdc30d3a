"""One HTTP request's worth of generation: submit its prompts to the scheduler, follow their
events on the event loop, and shape them into OpenAI completions / chat responses and chunks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from backends.hf.engine import Sequence
from backends.hf.output import Choice


class Generation:
    def __init__(self, runtime, prompts: list[list[int]], params, stops: list[str]):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices = [
            Choice(i, runtime.tokenizer, runtime.token_text, ids, stops, params.min_tokens)
            for i, ids in enumerate(prompts)
        ]
        put = self.queue.put_nowait
        self.seqs = [
            Sequence(ids, params, lambda ev, i=i: put((i, ev)), runtime.device, loop)
            for i, ids in enumerate(prompts)
        ]
        runtime.scheduler.submit(self.seqs)

    async def updates(self):
        """Yield each choice after every event it receives, until all choices are done."""
        pending = len(self.choices)
        while pending:
            index, event = await self.queue.get()
            choice = self.choices[index]
            if choice.done:
                continue  # tokens made before the scheduler saw our abort
            if choice.on_event(event):
                self.seqs[index].abort()  # a stop string ended it: free the batch row
            if choice.done:
                pending -= 1
            yield choice

    async def run(self) -> list[Choice]:
        async for _ in self.updates():
            pass
        return self.choices

    def abort(self) -> None:
        for seq in self.seqs:
            seq.abort()

    def error(self) -> str | None:
        return next((c.error for c in self.choices if c.error), None)

    def usage(self) -> dict:
        prompt = sum(len(c.prompt_ids) for c in self.choices)
        completion = sum(c.n_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(payload) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class CompletionFormatter:
    """/v1/completions bodies and stream chunks (legacy OpenAI format, as vLLM writes them)."""

    def __init__(self, model: str, echo_texts: list[str] | None, logprobs: bool):
        self.id, self.created, self.model = new_id("cmpl"), int(time.time()), model
        self.echo_texts = echo_texts
        self.logprobs = logprobs

    def _envelope(self, choices, usage=None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": usage}  # fmt: skip

    def response(self, gen: Generation) -> dict:
        choices = []
        for c in gen.choices:
            text = (self.echo_texts[c.index] if self.echo_texts else "") + c.text
            logprobs = None
            if self.logprobs:
                entries = (c.prompt_lps or []) if self.echo_texts else []
                logprobs, _ = c.completion_logprobs(entries + c.lps, 0)
            choices.append({"index": c.index, "text": text, "logprobs": logprobs,
                            "finish_reason": c.finish_reason, "stop_reason": c.stop_reason})  # fmt: skip
        return self._envelope(choices, gen.usage())

    async def stream(self, gen: Generation, include_usage: bool, continuous_usage: bool):
        n = len(gen.choices)
        offsets, lp_sent, echoed, tokens_sent = [0] * n, [0] * n, [False] * n, [0] * n
        usage = gen.usage if continuous_usage else (lambda: None)
        try:
            if self.echo_texts and not self.logprobs:
                for c in gen.choices:
                    echoed[c.index] = True
                    yield sse(self._envelope([self._choice(c.index, self.echo_texts[c.index])]))
            async for c in gen.updates():
                if c.error:
                    break
                i = c.index
                logprobs = None
                if self.echo_texts and not echoed[i] and c.prompt_lps is not None:
                    echoed[i] = True
                    lp, offsets[i] = c.completion_logprobs(c.prompt_lps, 0)
                    yield sse(self._envelope([self._choice(i, self.echo_texts[i], lp)], usage()))
                text = c.take_text()
                if self.logprobs and len(c.lps) > lp_sent[i]:
                    logprobs, offsets[i] = c.completion_logprobs(c.lps[lp_sent[i]:], offsets[i])
                    lp_sent[i] = len(c.lps)
                finish = c.finish_reason if c.done else None
                # one chunk per token, even when its text is empty or held back (as vLLM does):
                # clients time token arrivals from chunks
                new_token = c.n_tokens > tokens_sent[i]
                tokens_sent[i] = c.n_tokens
                if new_token or text or logprobs or finish:
                    choice = self._choice(i, text, logprobs, finish, c.stop_reason if finish else None)
                    yield sse(self._envelope([choice], usage()))
            if gen.error():
                yield sse({"error": {"message": gen.error(), "type": "server_error", "code": 500}})
            elif include_usage:
                yield sse(self._envelope([], gen.usage()))
            yield "data: [DONE]\n\n"
        finally:
            gen.abort()  # no-op when finished; frees the rows when the client went away

    @staticmethod
    def _choice(index, text, logprobs=None, finish=None, stop_reason=None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
                "stop_reason": stop_reason}  # fmt: skip


class ChatFormatter:
    """/v1/chat/completions bodies and chat.completion.chunk stream chunks."""

    def __init__(self, model: str, logprobs: bool):
        self.id, self.created, self.model = new_id("chatcmpl"), int(time.time()), model
        self.logprobs = logprobs

    def response(self, gen: Generation) -> dict:
        c = gen.choices[0]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": c.chat_logprobs(c.lps) if self.logprobs else None,
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [choice], "usage": gen.usage()}  # fmt: skip

    def _chunk(self, delta, logprobs=None, finish=None, usage=None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [choice], "usage": usage}  # fmt: skip

    async def stream(self, gen: Generation, include_usage: bool, continuous_usage: bool):
        usage = gen.usage if continuous_usage else (lambda: None)
        lp_sent = tokens_sent = 0
        try:
            yield sse(self._chunk({"role": "assistant", "content": ""}, usage=usage()))
            async for c in gen.updates():
                if c.error:
                    break
                text = c.take_text()
                logprobs = None
                if self.logprobs and len(c.lps) > lp_sent:
                    logprobs = c.chat_logprobs(c.lps[lp_sent:])
                    lp_sent = len(c.lps)
                new_token = c.n_tokens > tokens_sent  # a chunk per token, as for completions
                tokens_sent = c.n_tokens
                if (new_token or text or logprobs) and not (c.done and not text and not logprobs):
                    yield sse(self._chunk({"content": text}, logprobs, usage=usage()))
                if c.done:
                    yield sse(self._chunk({}, finish=c.finish_reason, usage=usage()))
            if gen.error():
                yield sse({"error": {"message": gen.error(), "type": "server_error", "code": 500}})
            elif include_usage:
                chunk = self._chunk({}, usage=gen.usage())
                chunk["choices"] = []
                yield sse(chunk)
            yield "data: [DONE]\n\n"
        finally:
            gen.abort()
