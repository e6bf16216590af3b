"""Diagram sources (Mermaid for JupyterLab, PlantUML for static SVG) from the one typed design model."""

from __future__ import annotations

import re

from p2c_notebook.stages.artifacts import ArchitectureDesign

# Mermaid and PlantUML happen to spell UML relations the same way.
_ARROWS = {"inherits": "<|--", "composes": "*--", "aggregates": "o--", "uses": "<.."}
_IDENT = re.compile(r"[^A-Za-z0-9_]")


def _ident(name: str) -> str:
    """Diagram identifiers: letters, digits and underscores only, so no model text becomes syntax."""
    cleaned = _IDENT.sub("_", name.strip()) or "_"
    return cleaned if not cleaned[0].isdigit() else f"_{cleaned}"


def _label(text: str) -> str:
    """Free text in a diagram: one line, no characters that open directives or change syntax."""
    return re.sub(r"[\r\n<>{}\[\]\"!;%#`]", " ", text).strip()


def class_diagram_mermaid(design: ArchitectureDesign) -> str:
    lines = ["classDiagram"]
    for spec in design.classes:
        lines.append(f"    class {_ident(spec.name)} {{")
        for attr in spec.attributes:
            lines.append(f"        +{_label(attr.name)}: {_label(attr.type)}".rstrip(": "))
        for method in spec.methods:
            lines.append(f"        +{_label(method.name)}({_label(method.args)}) {_label(method.returns)}".rstrip())
        lines.append("    }")
    for rel in design.relations:
        arrow = _ARROWS[rel.kind]
        label = f" : {_label(rel.label)}" if _label(rel.label) else ""
        lines.append(f"    {_ident(rel.target)} {arrow} {_ident(rel.source)}{label}")
    return "\n".join(lines) + "\n"


def sequence_diagram_mermaid(design: ArchitectureDesign) -> str:
    lines = ["sequenceDiagram"]
    for name in design.sequence.participants:
        lines.append(f"    participant {_ident(name)} as {_label(name)}")
    for msg in design.sequence.messages:
        lines.append(f"    {_ident(msg.source)}->>{_ident(msg.target)}: {_label(msg.call)}")
        if msg.returns:
            lines.append(f"    {_ident(msg.target)}-->>{_ident(msg.source)}: {_label(msg.returns)}")
    return "\n".join(lines) + "\n"


def class_diagram_plantuml(design: ArchitectureDesign) -> str:
    lines = ["@startuml"]
    for spec in design.classes:
        lines.append(f"class {_ident(spec.name)} {{")
        for attr in spec.attributes:
            lines.append(f"  +{_label(attr.name)} : {_label(attr.type)}".rstrip(" :"))
        for method in spec.methods:
            lines.append(f"  +{_label(method.name)}({_label(method.args)}) : {_label(method.returns)}".rstrip(" :"))
        lines.append("}")
    for rel in design.relations:
        label = f" : {_label(rel.label)}" if _label(rel.label) else ""
        lines.append(f"{_ident(rel.target)} {_ARROWS[rel.kind]} {_ident(rel.source)}{label}")
    lines.append("@enduml")
    return "\n".join(lines) + "\n"


def sequence_diagram_plantuml(design: ArchitectureDesign) -> str:
    lines = ["@startuml"]
    for name in design.sequence.participants:
        lines.append(f'participant "{_label(name)}" as {_ident(name)}')
    for msg in design.sequence.messages:
        lines.append(f"{_ident(msg.source)} -> {_ident(msg.target)} : {_label(msg.call)}")
        if msg.returns:
            lines.append(f"{_ident(msg.target)} --> {_ident(msg.source)} : {_label(msg.returns)}")
    lines.append("@enduml")
    return "\n".join(lines) + "\n"


def diagram_files(design: ArchitectureDesign) -> dict[str, str]:
    """The derived diagram sources saved beside design.json in the run folder."""
    return {
        "planning/class_diagram.mmd": class_diagram_mermaid(design),
        "planning/sequence_diagram.mmd": sequence_diagram_mermaid(design),
        "planning/class_diagram.puml": class_diagram_plantuml(design),
        "planning/sequence_diagram.puml": sequence_diagram_plantuml(design),
    }
