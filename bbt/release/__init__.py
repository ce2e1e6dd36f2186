"""A registry version reaches users only through checks: staging's smoke test, the roll-out to a fleet, the
@production alias and rollback (`bbt release`). Imports `bbt.deploy`, `bbt.serving` and the layers below."""
