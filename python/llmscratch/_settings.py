"""Saved settings against current ones: what a resumed run or a loader's state may not change."""
import json


def setting_conflicts(saved: dict, current: dict, names, prefix: str = "") -> list:
    """'name: saved -> current' for each of `names` whose value differs between two settings
    dicts; a name absent from `saved` (an older run's) is not compared. Values are compared as
    JSON holds them (tuples as lists)."""
    current = json.loads(json.dumps(current))
    return [f"{prefix}{n}: {saved[n]!r} -> {current.get(n)!r}" for n in names
            if n in saved and saved[n] != current.get(n)]
