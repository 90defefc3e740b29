"""The conversational core, pure: flows declared as data and an engine that interprets them.

``advance(flow, state, event, now) -> (state, effects)`` (:mod:`flows.engine`) decides what should
happen; the WeChat edge (``bot/``) carries the effects out and feeds results back as events.
No I/O, no asyncio, no WeChat types here (a test enforces it).

Modules: ``events`` (what happens), ``effects`` (what to do), ``conversation_state`` (where a
conversation stands, the ``Phase`` lifecycle, storage form), ``flow`` (``Step``/``Flow`` types),
``intake`` (``INTAKE_FLOW``), ``engine`` (``advance``), ``commands`` (global commands),
``prompts`` (questions and summary), ``validators`` and ``numerals`` (parsing answers),
``texts`` (every Chinese sentence said to residents).
"""
