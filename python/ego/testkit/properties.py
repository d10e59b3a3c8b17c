"""Property-based command sequences (needs `hypothesis`): generate commands, run them through
a behaviour the way the engine would, and check an invariant after each.

    from hypothesis import strategies as st
    from ego.testkit import check_invariant

    commands = st.one_of(
        st.builds(Credit, amount=st.integers(1, 100)),
        st.builds(Debit, amount=st.integers(1, 100)),
    )

    def test_the_balance_never_goes_negative():
        check_invariant(
            lambda: AccountBehavior("acc"),
            commands,
            lambda state, revision: state.balance >= 0,
            setup=[OpenAccount(initial_balance=50)],
        )
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from ego.behaviors import DurableStateBehavior, EventSourcedBehavior
from ego.testkit.scenario import DurableStateScenario, EventSourcedScenario, ScenarioError, describe_message

__all__ = ["check_invariant"]


def check_invariant(
    behavior: Callable[[], EventSourcedBehavior[Any, Any, Any] | DurableStateBehavior[Any, Any]],
    commands: Any,
    invariant: Callable[[Any, int], bool],
    *,
    setup: Sequence[Message] = (),
    max_examples: int = 200,
    max_commands: int = 50,
) -> None:
    """Runs sequences of commands drawn from the hypothesis strategy `commands` through a fresh
    `behavior()` (after the `setup` commands) and checks `invariant(state, revision)` after every
    command, accepted or rejected. A failure shows the shortest failing sequence."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=max_examples, deadline=None)
    @given(st.lists(commands, max_size=max_commands))
    def run(sequence: list[Message]) -> None:
        b = behavior()
        scenario: Any = EventSourcedScenario(b) if isinstance(b, EventSourcedBehavior) else DurableStateScenario(b)
        for command in setup:
            scenario.when(command)
        for i, command in enumerate(sequence):
            scenario.when(command)
            revision = scenario.revision if isinstance(scenario, EventSourcedScenario) else scenario.version
            if not invariant(scenario.state, revision):
                steps = "\n".join(f"    [{k}] {describe_message(c)}" for k, c in enumerate(sequence[: i + 1]))
                raise ScenarioError(
                    f"the invariant does not hold after command {i}:\n{steps}\n  state: {describe_message(scenario.state)} (revision {revision})"
                )

    run()
