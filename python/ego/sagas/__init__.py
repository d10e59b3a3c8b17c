"""Sagas (process managers): long-running processes that survive crashes.

A saga reacts to events of the journal by sending commands to entities, and to their answers;
it compensates when it asks to or when its timeout falls due. It is an event-sourced entity of
its own (persistence id ``ego.saga:<saga id>``), so its status, progress and deadlines survive
restarts, and its commands carry idempotency keys derived from the saga id and the step, so a
step is never applied twice. See docs/sagas.md.
"""

from ego.sagas.behavior import SagaAction, SagaBehavior, SagaCommand, SagaInfo, SagaStatus, SagaStepError

__all__ = ["SagaAction", "SagaBehavior", "SagaCommand", "SagaInfo", "SagaStatus", "SagaStepError"]
