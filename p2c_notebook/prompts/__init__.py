"""Prompt templates (data, in the .md files beside this module) and the one builder that renders them."""

from p2c_notebook.prompts.builder import PromptBuilder, render

__all__ = ["PromptBuilder", "render"]
