"""Diagrams: UML as Mermaid / PlantUML text (sources), the sandboxed PlantUML renderer (plantuml)."""
