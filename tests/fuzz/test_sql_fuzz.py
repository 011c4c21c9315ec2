"""Issue 12: every api.* function fuzzed with hostile arguments (tests/fuzz/sqlfuzz.py).

`make test` runs a bounded number of examples per function with a fixed seed
(derandomize); `make fuzz` runs the same with FUZZ_EXAMPLES examples and prints the table.
"""

from __future__ import annotations

import os

from tests.pg import LOGINS
from tests.fuzz.sqlfuzz import Fuzzer, api_functions, make_fixture

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
OUTSIDE_EXAMPLES = max(3, EXAMPLES // 10)
# FUZZ_FUNCTIONS=ingest_stripe_event,place_hold: only those (a focused longer run).
ONLY = {f for f in os.environ.get("FUZZ_FUNCTIONS", "").split(",") if f}


def test_every_api_function_answers_hostile_arguments_with_a_contract_error_and_writes_nothing(module_db):
    functions = api_functions(module_db.url, LOGINS)
    assert len(functions) >= 25, "the catalog query found too few api functions"
    if ONLY:
        functions = [fn for fn in functions if fn.name in ONLY]
        assert functions, f"FUZZ_FUNCTIONS names no api function: {ONLY}"
    fuzzer = Fuzzer(module_db, make_fixture(module_db), EXAMPLES)
    try:
        for fn in functions:
            assert fn.duty_logins, f"{fn.signature}: no test login may call it"
            fuzzer.fuzz(fn)
            fuzzer.fuzz_outside_duty(fn, OUTSIDE_EXAMPLES)
    finally:
        fuzzer.close()
    print("\n" + fuzzer.stats.table())
    for fn in functions:  # every function was really called (one example is all a function without arguments has)
        assert fuzzer.stats.calls[fn.name] >= (min(EXAMPLES, 5) if fn.args else 1), fn.name
    findings = fuzzer.stats.findings
    assert not findings, f"{len(findings)} findings:\n" + "\n".join(findings[:60])
