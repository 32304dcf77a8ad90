"""Drawing a model (or an instance of it) as Mermaid or Graphviz DOT.

Statuses are coloured by type, as Statusek's graph view did; statuses set on
an instance are drawn with a thick border and a tick.
"""

from __future__ import annotations

from collections.abc import Collection

from statusek.core.model import StatusModel, StatusType

_MERMAID_CLASSES = {
    StatusType.MANDATORY: "mandatory",
    StatusType.OPTIONAL: "optional",
    StatusType.STOP_STATUS: "stop",
}
_FILL = {
    StatusType.MANDATORY: ("#cfe2ff", "#0b5ed7"),
    StatusType.OPTIONAL: ("#fff3cd", "#b58105"),
    StatusType.STOP_STATUS: ("#f8d7da", "#b02a37"),
}


def _label(name: str, kind: StatusType, is_set: bool) -> str:
    mark = " ✔" if is_set else ""
    return f"{name}{mark}\\n({kind.value})"


def _title(model: StatusModel) -> str:
    # Version 0 means "read from a file, not stored yet".
    return f"{model.object_name} (version {model.version})" if model.version else model.object_name


def mermaid(model: StatusModel, is_set: Collection[str] = ()) -> str:
    ids = {s.name: f"s{i}" for i, s in enumerate(model.statuses)}
    lines = ["flowchart LR", f"  %% {_title(model)}"]
    for s in model.statuses:
        text = _label(s.name, s.type, s.name in is_set).replace("\\n", "<br/>").replace('"', "#quot;")
        lines.append(f'  {ids[s.name]}["{text}"]:::{_MERMAID_CLASSES[s.type]}')
    for s in model.statuses:
        lines.extend(f"  {ids[prev]} --> {ids[s.name]}" for prev in s.after)
    for kind, cls in _MERMAID_CLASSES.items():
        fill, stroke = _FILL[kind]
        lines.append(f"  classDef {cls} fill:{fill},stroke:{stroke},color:#000")
    lines.append("  classDef set stroke-width:4px")
    done = [ids[name] for name in is_set if name in ids]
    if done:
        lines.append(f"  class {','.join(done)} set")
    return "\n".join(lines) + "\n"


def dot(model: StatusModel, is_set: Collection[str] = ()) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        f"digraph {quoted(model.object_name)} {{",
        "  rankdir=LR;",
        f"  label={quoted(_title(model))};",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for s in model.statuses:
        fill, stroke = _FILL[s.type]
        width = 4 if s.name in is_set else 1
        label = _label(s.name, s.type, s.name in is_set)
        lines.append(
            f'  {quoted(s.name)} [label="{label.replace(chr(34), chr(92) + chr(34))}",'
            f' fillcolor="{fill}", color="{stroke}", penwidth={width}];'
        )
    for s in model.statuses:
        lines.extend(f"  {quoted(prev)} -> {quoted(s.name)};" for prev in s.after)
    lines.append("}")
    return "\n".join(lines) + "\n"
