"""One HTTP request's worth of generation: submit its prompts to the scheduler, follow their
events on the event loop, and shape them into OpenAI completions / chat responses and chunks."""

from __future__ import annotations

import asyncio

from backends.hf.engine import Sequence
from backends.hf.output import Choice
from backends.openai_server.logprobs import TokenNames, chat_logprobs, completion_logprobs
from backends.openai_server.responses import (ROLE_DELTA, Envelope, StreamWriter, chat_choice, chat_delta,
                                              completion_choice, usage)  # fmt: skip


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
        return usage(sum(len(c.prompt_ids) for c in self.choices), sum(c.n_tokens for c in self.choices))


class CompletionFormatter:
    """/v1/completions bodies and stream chunks (legacy OpenAI format, as vLLM writes them)."""

    def __init__(self, model: str, echo_texts: list[str] | None, logprobs: bool, names: TokenNames):
        self.envelope = Envelope(chat=False, model=model)
        self.echo_texts = echo_texts
        self.logprobs = logprobs
        self.names = names

    def _logprobs(self, c: Choice, entries, offset: int) -> tuple[dict, int]:
        offsets, end = c.text_offsets(entries, offset)
        return completion_logprobs(entries, offsets, self.names), end

    def response(self, gen: Generation) -> dict:
        choices = []
        for c in gen.choices:
            text = (self.echo_texts[c.index] if self.echo_texts else "") + c.text
            logprobs = None
            if self.logprobs:
                entries = (c.prompt_lps or []) if self.echo_texts else []
                logprobs, _ = self._logprobs(c, entries + c.lps, 0)
            choices.append(completion_choice(c.index, text, logprobs, c.finish_reason, c.stop_reason))
        return self.envelope.body(choices, gen.usage())

    async def stream(self, gen: Generation, options):
        out = StreamWriter(self.envelope, options, gen.usage)
        n = len(gen.choices)
        offsets, lp_sent, echoed, tokens_sent = [0] * n, [0] * n, [False] * n, [0] * n
        try:
            if self.echo_texts and not self.logprobs:
                for c in gen.choices:
                    echoed[c.index] = True
                    yield out.chunk(completion_choice(c.index, self.echo_texts[c.index]))
            async for c in gen.updates():
                if c.error:
                    break
                i = c.index
                logprobs = None
                if self.echo_texts and not echoed[i] and c.prompt_lps is not None:
                    echoed[i] = True
                    lp, offsets[i] = self._logprobs(c, c.prompt_lps, 0)
                    yield out.chunk(completion_choice(i, self.echo_texts[i], lp))
                text = c.take_text()
                if self.logprobs and len(c.lps) > lp_sent[i]:
                    logprobs, offsets[i] = self._logprobs(c, c.lps[lp_sent[i]:], offsets[i])
                    lp_sent[i] = len(c.lps)
                finish = c.finish_reason if c.done else None
                # one chunk per token, even when its text is empty or held back (as vLLM does):
                # clients time token arrivals from chunks
                new_token = c.n_tokens > tokens_sent[i]
                tokens_sent[i] = c.n_tokens
                if new_token or text or logprobs or finish:
                    yield out.chunk(completion_choice(i, text, logprobs, finish, c.stop_reason if finish else None))
            for event in out.end(gen.error()):
                yield event
        finally:
            gen.abort()  # no-op when finished; frees the rows when the client went away


class ChatFormatter:
    """/v1/chat/completions bodies and chat.completion.chunk stream chunks."""

    def __init__(self, model: str, logprobs: bool, names: TokenNames):
        self.envelope = Envelope(chat=True, model=model)
        self.logprobs = logprobs
        self.names = names

    def response(self, gen: Generation) -> dict:
        c = gen.choices[0]
        logprobs = chat_logprobs(c.lps, self.names) if self.logprobs else None
        return self.envelope.body([chat_choice(0, c.text, logprobs, c.finish_reason, c.stop_reason)], gen.usage())

    async def stream(self, gen: Generation, options):
        out = StreamWriter(self.envelope, options, gen.usage)
        lp_sent = tokens_sent = 0
        try:
            yield out.chunk(chat_delta(0, ROLE_DELTA))
            async for c in gen.updates():
                if c.error:
                    break
                text = c.take_text()
                logprobs = None
                if self.logprobs and len(c.lps) > lp_sent:
                    logprobs = chat_logprobs(c.lps[lp_sent:], self.names)
                    lp_sent = len(c.lps)
                new_token = c.n_tokens > tokens_sent  # a chunk per token, as for completions
                tokens_sent = c.n_tokens
                if (new_token or text or logprobs) and not (c.done and not text and not logprobs):
                    yield out.chunk(chat_delta(0, {"content": text}, logprobs))
                if c.done:
                    yield out.chunk(chat_delta(0, {}, finish=c.finish_reason))
            for event in out.end(gen.error()):
                yield event
        finally:
            gen.abort()
