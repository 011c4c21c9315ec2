"""Calls between our schemas go one way (issue 13): api and ops on top, core at the bottom.

The graph is read from the catalog of a migrated database, not from the files: every
function body (pg_proc.prosrc) is searched for schema-qualified calls `schema.fn(` to a
function of another of our schemas; a trigger counts as a call by the schema of its table
(an INSERT into booking.bookings runs what its triggers run); a view counts as a call by
its schema of every function it uses (pg_depend). The test fails on any cycle between
schemas and on any internal schema calling api or ops, and prints the path.

    .venv/bin/python -m tests.sql.test_layers URL   # print the graph of the database at URL
"""

from __future__ import annotations

import re
import sys

from tests.pg import SQL, connect

SCHEMAS = ("api", "ops", "core", "stripe", "booking", "ledger", "jobs")
PUBLIC = ("api", "ops")  # the contract's faces: nothing internal may call them
# docs/DESIGN.md, "Layers", top first: a schema calls only schemas of layers below its own.
# sql/migrate.sh applies the functions in the reverse order (a LANGUAGE sql body is checked
# when it is created).
LAYERS = (("api", "ops"), ("stripe",), ("booking",), ("ledger",), ("core",), ("jobs",))

FUNCTIONS = """
SELECT n.nspname, p.proname, p.prosrc
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(%(schemas)s)
"""

# A trigger runs its function on behalf of its table's schema.
TRIGGERS = """
SELECT tn.nspname || '.' || c.relname AS on_table, tn.nspname AS caller, fn.nspname AS callee,
       fn.nspname || '.' || p.proname AS function
FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace AS tn ON tn.oid = c.relnamespace
JOIN pg_catalog.pg_proc AS p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace AS fn ON fn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND tn.nspname = ANY(%(schemas)s) AND fn.nspname = ANY(%(schemas)s)
"""

# A view (its rewrite rule) depends on every function it calls.
VIEWS = """
SELECT DISTINCT vn.nspname || '.' || v.relname AS view, vn.nspname AS caller, fn.nspname AS callee,
       fn.nspname || '.' || p.proname AS function
FROM pg_catalog.pg_depend AS d
JOIN pg_catalog.pg_rewrite AS r ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND r.oid = d.objid
JOIN pg_catalog.pg_class AS v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace AS vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_proc AS p ON d.refclassid = 'pg_catalog.pg_proc'::regclass AND p.oid = d.refobjid
JOIN pg_catalog.pg_namespace AS fn ON fn.oid = p.pronamespace
WHERE vn.nspname = ANY(%(schemas)s) AND fn.nspname = ANY(%(schemas)s)
"""

CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\.\s*([a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)
COMMENT = re.compile(r"--[^\n]*")


def schema_edges(conn) -> dict[tuple[str, str], list[str]]:
    """(caller schema, callee schema) -> the calls that make the edge, as 'who -> what'."""
    params = {"schemas": list(SCHEMAS)}
    functions = conn.execute(FUNCTIONS, params).fetchall()
    ours = {(schema, name) for schema, name, _ in functions}
    edges: dict[tuple[str, str], list[str]] = {}

    def add(caller: str, callee: str, why: str) -> None:
        if caller != callee:
            edges.setdefault((caller, callee), []).append(why)

    for schema, name, source in functions:
        for callee, fn in CALL.findall(COMMENT.sub("", source or "")):
            callee, fn = callee.lower(), fn.lower()
            if (callee, fn) in ours:
                add(schema, callee, f"{schema}.{name} calls {callee}.{fn}")
    for on_table, caller, callee, function in conn.execute(TRIGGERS, params).fetchall():
        add(caller, callee, f"a trigger on {on_table} runs {function}")
    for view, caller, callee, function in conn.execute(VIEWS, params).fetchall():
        add(caller, callee, f"view {view} calls {function}")
    return edges


def layering_faults(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """Every internal schema calling api/ops or a schema not below it in LAYERS, and every
    cycle between schemas, with its path."""
    faults = []
    for (caller, callee), why in sorted(edges.items()):
        if callee in PUBLIC and caller not in PUBLIC:
            faults.append(f"internal {caller} calls {callee}: {'; '.join(sorted(set(why)))}")
    rank = {schema: i for i, layer in enumerate(LAYERS) for schema in layer}
    for (caller, callee), why in sorted(edges.items()):
        if caller not in PUBLIC and rank[callee] <= rank[caller]:
            faults.append(f"{caller} calls {callee}, a layer not below its own: {'; '.join(sorted(set(why)))}")
    graph: dict[str, set[str]] = {}
    for caller, callee in edges:
        graph.setdefault(caller, set()).add(callee)
    # One cycle per strongly connected group is enough to tell: a depth-first search that
    # reports each back edge's loop once per set of schemas in it.
    seen_cycles: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [nxt]
                if frozenset(loop) not in seen_cycles:
                    seen_cycles.add(frozenset(loop))
                    steps = [f"{a} -> {b} ({sorted(set(edges[(a, b)]))[0]})" for a, b in zip(loop, loop[1:])]
                    faults.append("cycle " + " -> ".join(loop) + ": " + "; ".join(steps))
            elif state.get(nxt) is None:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])
    return faults


DEFINED = re.compile(r"^CREATE (?:OR REPLACE )?(?:FUNCTION|PROCEDURE) ([a-z_]+)\.([a-z_0-9]+)\(", re.IGNORECASE | re.MULTILINE)


def misplaced_definitions(functions_dir) -> list[str]:
    """Internal functions defined outside sql/functions/<schema>.sql or <schema>/*.sql."""
    misplaced = []
    for path in sorted(functions_dir.glob("**/*.sql")):
        home = path.relative_to(functions_dir).parts[0].removesuffix(".sql")
        for schema, name in DEFINED.findall(path.read_text()):
            if schema.lower() not in PUBLIC and schema.lower() != home:
                misplaced.append(f"{schema}.{name} in {path.relative_to(functions_dir.parent)}")
    return misplaced


def test_each_schema_has_its_functions_in_the_files_named_for_it(tmp_path):
    assert misplaced_definitions(SQL / "functions") == []
    # A booking function in a stripe file is found.
    (tmp_path / "functions" / "stripe").mkdir(parents=True)
    (tmp_path / "functions" / "stripe" / "x.sql").write_text(
        "CREATE OR REPLACE FUNCTION booking.strayed() RETURNS void LANGUAGE sql AS $$ SELECT $$;\n")
    assert misplaced_definitions(tmp_path / "functions") == ["booking.strayed in functions/stripe/x.sql"]


def test_calls_between_schemas_go_one_way(db):
    with connect(db.url) as conn:
        edges = schema_edges(conn)
    faults = layering_faults(edges)
    assert not faults, "\n".join(faults)
    # The picture of docs/DESIGN.md ("Layers") is what the catalog says.
    graph = sorted(edges)
    assert ("api", "booking") in graph and ("stripe", "booking") in graph and ("booking", "core") in graph


def test_a_planted_cycle_is_reported(db):
    """A core function or trigger calling booking (the bottom calling up) and a booking
    function calling api must fail the check."""
    with connect(db.url) as conn:
        conn.execute(
            "CREATE FUNCTION core.planted_upcall(p_booking_id uuid) RETURNS void LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM booking.expire_due_bookings(); END; $$")
        conn.execute(
            "CREATE FUNCTION booking.planted_api_call() RETURNS jsonb LANGUAGE plpgsql AS"
            " $$ BEGIN RETURN api.health(); END; $$")
        # A trigger is a call by its table's schema: core's table running a booking function.
        conn.execute("CREATE TRIGGER planted_trigger AFTER INSERT ON core.error_groups"
                     " FOR EACH ROW EXECUTE FUNCTION booking.note_row_change('forced')")
        faults = layering_faults(schema_edges(conn))
    upcalls = [f for f in faults if f.startswith("core calls booking, a layer not below its own")]
    assert len(upcalls) == 1, faults
    assert "core.planted_upcall calls booking.expire_due_bookings" in upcalls[0], upcalls
    assert "a trigger on core.error_groups runs booking.note_row_change" in upcalls[0], upcalls
    # booking calls core (booking.announce_changes), so core calling booking is a cycle too.
    assert any(f.startswith("cycle ") and "core -> booking" in f and "booking -> core" in f for f in faults), faults
    assert any(f.startswith("internal booking calls api") and "booking.planted_api_call calls api.health" in f
               for f in faults), faults


if __name__ == "__main__":
    with connect(sys.argv[1]) as conn:
        found = schema_edges(conn)
    for (a, b), why in sorted(found.items()):
        print(f"{a} -> {b}: {len(why)} ({sorted(set(why))[0]})")
    print("\n".join(layering_faults(found)) or "no faults")
