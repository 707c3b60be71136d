"""docs/config.md, generated from the config schema: every key, its type, default,
allowed values and description, one table per section.

    python tools/config_reference.py            # rewrite docs/config.md
    python tools/config_reference.py --check    # exit 1 if docs/config.md is stale

The schema (workflow/schemas/config.schema.yaml) is the one place where a setting is
described; tests/test_docs.py checks that the page equals what this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PAGE = REPO / "docs" / "config.md"

HEADER = """# Config reference

Generated from `workflow/schemas/config.schema.yaml` by `python
tools/config_reference.py`; do not edit by hand (`tests/test_docs.py` checks that it is
current). `config.yaml` holds the values of the template; a file passed with
`--configfile` is read over it key by key, and every key below that neither sets takes
its default. An unknown key or a value out of range stops the run before any job
starts, naming the key.
"""


def resolve(node: dict, schema: dict) -> dict:
    """``node`` with a local ``$ref`` replaced by what it points to."""
    while isinstance(node, dict) and "$ref" in node:
        path = node["$ref"].removeprefix("#/").split("/")
        target = schema
        for part in path:
            target = target[part]
        own = {k: v for k, v in node.items() if k != "$ref"}
        merged = {**target, **own}
        if "properties" in target and "properties" in own:
            # defaults: the model's keys, each given its default here.
            merged["properties"] = {
                key: {**value, **own["properties"].get(key, {})}
                for key, value in target["properties"].items()
            }
        node = merged
    return node


def type_text(node: dict, schema: dict) -> str:
    node = resolve(node, schema)
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(type_text(option, schema) for option in node[key])
    if "enum" in node:
        return " or ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(kinds)
    if "array" in kinds and "items" in node:
        text = text.replace("array", f"list of {type_text(node['items'], schema)}")
    bounds = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            bounds.append(f"{sign} {node[key]}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def rows(properties: dict, schema: dict, prefix: str) -> list[tuple[str, dict]]:
    """(dotted key, node) for every key, depth first; an object's own row comes first."""
    found = []
    for name, node in properties.items():
        node = resolve(node, schema)
        key = f"{prefix}{name}"
        found.append((key, node))
        if "properties" in node:
            found += rows(node["properties"], schema, f"{key}.")
    return found


def default_text(node: dict, required: bool = False) -> str:
    if "default" not in node:
        return "required" if required else "-"
    return f"`{json.dumps(node['default'])}`"


def reference(schema: dict) -> str:
    lines = [HEADER]
    sections = schema["properties"]
    for name, section in sections.items():
        section = resolve(section, schema)
        lines.append(f"## `{name}`\n")
        lines.append(cell(section.get("description", "")) + "\n")
        nested = section.get("properties")
        extra = section.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("$ref") == "#/$defs/model":
            lines.append(
                f"Default: {default_text(section)}. Each entry (a name of your choice)"
                " takes any key of `defaults`, with the same types and meanings; the"
                " keys it sets replace the defaults' for that model.\n"
            )
            continue
        if isinstance(extra, dict):
            extra = resolve(extra, schema)
            nested = extra.get("properties")
            lines.append(
                f"Each entry of `{name}` (a name of your choice) takes these keys:\n"
            )
        if not nested:
            lines.append(
                f"Type: {type_text(section, schema)}."
                f" Default: {default_text(section, name in schema['required'])}.\n"
            )
            continue
        lines.append("| key | type | default | meaning |")
        lines.append("| --- | --- | --- | --- |")
        for key, node in rows(nested, schema, f"{name}."):
            lines.append(
                f"| `{key}` | {cell(type_text(node, schema))} | "
                f"{cell(default_text(node))} | {cell(node.get('description', ''))} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say if stale")
    args = parser.parse_args(argv)
    text = reference(yaml.safe_load(SCHEMA.read_text()))
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            sys.exit(f"{PAGE} is stale: run python tools/config_reference.py")
        return
    PAGE.write_text(text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
