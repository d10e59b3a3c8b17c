"""A test behaviour shared by the fencing and lease tests (and their child processes): each
``Note`` is one event, the ``Counter`` state counts them."""

from __future__ import annotations

import ego

from egotest.messages_pb2 import Counter, Note


class Tally(ego.EventSourcedBehavior):
    """Each `Note` is one event; the state counts them."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Counter:
        return Counter()

    def handle_command(self, command: Note, state: Counter) -> list[Note]:
        return [Note(text=self.entity_id, n=state.value + 1)]

    def handle_event(self, event: Note, state: Counter) -> Counter:
        state.value = event.n
        return state
