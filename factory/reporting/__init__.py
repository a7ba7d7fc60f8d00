"""Helpers shared by the dataset report (`factory preview`) and the evaluation report (`factory evaluate`):
statistics, Markdown tables and figures."""
