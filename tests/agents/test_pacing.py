"""`yielding`: every item, in order, with the event loop let run between slices."""

from __future__ import annotations

import asyncio

from agents.pacing import yielding


async def test_every_item_in_order_with_a_loop_turn_before_every_nth() -> None:
    turns = 0
    running = True

    async def other_work() -> None:
        nonlocal turns
        while running:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    turns = 0
    seen = [item async for item in yielding(range(1050), 500)]
    running = False
    await other
    assert seen == list(range(1050))
    assert turns == 2
