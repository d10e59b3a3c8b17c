"""Testing helpers for ego users: the store conformance suite (:mod:`ego.testkit.conformance`)."""
