"""Multi-turn conversations: a turn is sent only after the previous turn's answer arrived, plus a
think time, and its prompt is the whole conversation so far (every earlier user turn and answer)
followed by the turn's new user content, so an engine with a prefix cache finds the history cached.

`--num-requests` conversations of `--turns` turns each: request `c * turns + t` is turn t of
conversation c. Under `--concurrency N`, N conversations are in flight (a stream takes the next
conversation when its current one ends); under `--rate R`, conversations start as Poisson
arrivals at R/s and each runs its turns on its own. A turn's `scheduled` send is the previous
answer's end plus the think time, so `send - scheduled` (schedule lag) says how late the client
sent it; a conversation's first turn is scheduled by the load pattern as a single request is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import numpy as np

from harness.adapter import GenRequest, RequestRecord
from harness.bench.send_timer import SendTimer
from harness.errors import HyperbenchError

Send = Callable[[int, GenRequest, "float | None"], Awaitable[RequestRecord]]


def as_conversations(reqs: list[GenRequest], turns: int) -> list[GenRequest]:
    """Number a flat list of user turns as conversations of `turns` each (in place) and give each
    turn the user contents of the turns before it (references, not copies)."""
    if turns <= 1:
        return reqs
    for i, r in enumerate(reqs):
        c, t = divmod(i, turns)
        r.conversation, r.turn = c, t
        r.earlier = [_user(reqs[c * turns + j]) for j in range(t)]
    return reqs


def _user(r: GenRequest):
    return r.messages if r.messages is not None else r.prompt


def turn_request(req: GenRequest, answers: list[str], encode: Callable[[str], list[int]] | None) -> GenRequest:
    """The request actually sent for turn `req.turn`: earlier user turns and their `answers`
    interleaved, then this turn's user content. Chat: user/assistant messages. Token ids: the
    answers' text tokenized (`encode`: the model's tokenizer, no special tokens). Text: each answer
    continues its prompt, a newline before the next user turn."""
    if len(answers) != len(req.earlier):
        raise ValueError(f"turn {req.turn} needs {len(req.earlier)} answers, got {len(answers)}")
    if req.messages is not None:
        msgs: list[dict] = []
        for user, answer in zip(req.earlier, answers):
            msgs += [*user, {"role": "assistant", "content": answer}]
        return replace(req, messages=msgs + list(req.messages), earlier=[])
    if isinstance(req.prompt, list):
        if encode is None and req.earlier:
            raise HyperbenchError("multi-turn token-id prompts need the model's tokenizer for the answers")
        ids: list[int] = []
        for user, answer in zip(req.earlier, answers):
            ids += list(user) + list(encode(answer))
        return replace(req, prompt=ids + list(req.prompt), earlier=[])
    text = "".join(f"{user}{answer}\n" for user, answer in zip(req.earlier, answers))
    return replace(req, prompt=text + str(req.prompt), earlier=[])


async def run_conversations(send: Send, requests: list[GenRequest], kind: str, value: float, seed: int,
                            think_s: float, encode, answered: dict[tuple[int, int], str],
                            sem: asyncio.Semaphore | None = None) -> None:
    """Send the given turns (all of a point's, or a resumed point's missing ones) conversation by
    conversation under the load pattern. `answered`: (conversation, turn) -> answer text of turns
    a cut session already has (a resumed conversation goes on from them). `send(i, req,
    scheduled)` sends position i of `requests` and returns its record."""
    from harness.bench.loadgen import poisson_gaps

    convs: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
        convs.setdefault(r.conversation, []).append(i)
    order = [sorted(idx, key=lambda i: requests[i].turn) for _, idx in sorted(convs.items())]

    async def converse(idx: list[int], first_due: float | None, last_end: float | None = None) -> list[RequestRecord]:
        first = requests[idx[0]]
        answers = [answered.get((first.conversation, t), "") for t in range(first.turn)]
        due, recs = first_due, []
        for i in idx:
            if recs:  # the next turn: after the answer, plus the think time
                due = (recs[-1].end or time.perf_counter()) + think_s
                await timer.until(due)
            wire = turn_request(requests[i], answers, encode)
            if sem is None:
                rec = await send(i, wire, due)
            else:
                async with sem:
                    rec = await send(i, wire, due)
            if not recs and last_end is not None:
                # closed loop: the stream's idle time between conversations (within one, the wait
                # is the think time); set before the record is written (a loop callback)
                rec.send_gap = rec.send - last_end
            recs.append(rec)
            answers.append(rec.text)  # a failed turn's (empty or cut) answer: the conversation goes on
        return recs

    with SendTimer() as timer:  # think times and conversation starts, to the microsecond
        if kind == "concurrency":
            queue = order[::-1]

            async def stream() -> None:
                last_end = None
                while queue:
                    recs = await converse(queue.pop(), None, last_end)
                    last_end = recs[-1].end

            await asyncio.gather(*(stream() for _ in range(int(value))))
            return
        # open loop: conversations start on the Poisson schedule, each then runs on its own
        offsets = np.cumsum(poisson_gaps(len(order), value, seed))
        t0 = time.perf_counter()
        tasks = []
        for idx, offset in zip(order, offsets):
            due = t0 + float(offset)
            await timer.until(due)
            tasks.append(asyncio.create_task(converse(idx, due)))
            if any(t.done() and not t.cancelled() and t.exception() for t in tasks):
                break  # a turn or its record failed past recovery: start no more conversations
        await asyncio.gather(*tasks)
