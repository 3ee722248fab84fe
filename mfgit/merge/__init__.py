"""Merging adapters: strategies (tensor math), the engine that streams modules, the planner."""
