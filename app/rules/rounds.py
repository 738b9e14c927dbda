"""The round numbers a session has not applied (SPEC §5.3), kept as ranges.

Gateways retry, so a round can land after a later one. A round above
`round_count` is applied and the numbers it jumps over become missing; a
missing number that arrives later is applied then. The ranges are bounded
per session (`Policy.max_missing_ranges`): past the bound the oldest range is
given up, its numbers stay missing for good and a late one is a duplicate. A
misbehaving gateway can then under-bill a session, but never bill it twice.
"""

from __future__ import annotations

from bisect import bisect_right

from app.rules.values import value


@value
class MissingRounds:
    """The numbers in 1..round_count never applied.

    `ranges` is flat, `(start, end, start, end, ...)`, each pair a half-open
    range `[start, end)`, ascending and disjoint: a number is in a range
    exactly when `bisect_right(ranges, number)` is odd. Flat ints keep the
    common case (no gaps: the shared empty value) free and a gappy session
    small in memory and in the changelog.
    `given_up` counts the numbers of the ranges dropped to respect the bound.
    """

    ranges: tuple[int, ...] = ()
    given_up: int = 0

    @property
    def count(self) -> int:
        """What the closure reports as `missing_rounds`."""
        return self.given_up + sum(self.ranges[1::2]) - sum(self.ranges[0::2])

    @property
    def range_count(self) -> int:
        return len(self.ranges) // 2

    def holds(self, number: int) -> bool:
        """Whether `number` is missing and can still be applied."""
        return bisect_right(self.ranges, number) % 2 == 1

    def after_jump(self, round_count: int, number: int, bound: int) -> MissingRounds:
        """Round `number` > `round_count` applied: the numbers between go missing."""
        if number == round_count + 1:
            return self
        # Above every kept range (they all end at or below round_count), so
        # appending keeps the order.
        return self._bounded((*self.ranges, round_count + 1, number), bound)

    def after_late(self, number: int, bound: int) -> MissingRounds:
        """Missing round `number` applied: its range shrinks or splits in two."""
        index = bisect_right(self.ranges, number)
        start, end = self.ranges[index - 1], self.ranges[index]
        left = (start, number) if start < number else ()
        right = (number + 1, end) if number + 1 < end else ()
        return self._bounded((*self.ranges[:index - 1], *left, *right, *self.ranges[index + 1:]), bound)

    def _bounded(self, ranges: tuple[int, ...], bound: int) -> MissingRounds:
        """At most `bound` ranges: the oldest (lowest) go first."""
        excess = len(ranges) // 2 - bound
        if excess <= 0:
            return MissingRounds(ranges, self.given_up) if ranges or self.given_up else NO_MISSING_ROUNDS
        dropped = ranges[:2 * excess]
        return MissingRounds(ranges[2 * excess:], self.given_up + sum(dropped[1::2]) - sum(dropped[0::2]))


#: A session without gaps (nearly all of them) shares this one.
NO_MISSING_ROUNDS = MissingRounds()
